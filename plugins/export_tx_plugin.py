"""Airflow plugin: the ``/exports`` REST API, the Exports page in the UI, and the listener that
keeps transaction headers consistent when a run is ended from Airflow's side."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from export_tx import listener
from export_tx.api.app import app


class ExportTransactionsPlugin(AirflowPlugin):
    name = "export_transactions"
    fastapi_apps = [{"app": app, "url_prefix": "/exports", "name": "Export transactions API"}]
    external_views = [
        {
            "name": "Exports",
            "href": "/exports/ui",
            "destination": "nav",
            "url_route": "exports",
            "category": "browse",
        }
    ]
    listeners = [listener]
