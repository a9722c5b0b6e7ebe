"""The ``/exports`` REST API (FastAPI), mounted into the Airflow api-server by a plugin."""
