"""The Airflow glue, split as Airflow's providers split theirs: the DAG's typed Params
(``params``), triggers, sensors, operators, the run listener (``listeners``), and a task's
transaction and how its failures are recorded (``context``). The DAG files stay thin over these."""
