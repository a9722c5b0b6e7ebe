"""Airflow plugin: the ``/exports`` REST API, the Exports page in the UI, and the listener that
keeps transaction headers consistent when a run is ended from Airflow's side."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from export_tx.airflow import listeners as header_listener
from export_tx.api.app import app


class ExportTransactionsPlugin(AirflowPlugin):
    name = "export_transactions"
    fastapi_apps = [{"app": app, "url_prefix": "/exports", "name": "Export transactions API"}]
    external_views = [
        # A first-class place in Airflow's main navigation (no category: not under Browse).
        {"name": "Exports", "href": "/exports/ui", "destination": "nav", "url_route": "exports"},
        # A tab on every run's page: the export of that run (the run id is the token), or a line
        # saying the run is not an export the signed-in user may see.
        {
            "name": "Export",
            "href": "/exports/ui?run={RUN_ID}&dag={DAG_ID}",
            "destination": "dag_run",
            "url_route": "export-of-run",
        },
    ]
    listeners = [header_listener]
