"""Development tooling, not installed and never imported by shipped code: the local Airflow stack
behind ``make demo``, the tests and the benchmark (``stack``), and the demo data (``demo_data``)."""
