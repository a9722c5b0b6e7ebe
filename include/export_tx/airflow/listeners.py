"""Airflow listener: keep the header consistent when Airflow ends a run on its own terms
(marked failed in the UI or through the REST API), where no task of ours runs any more."""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from export_tx.config import DAG_ID

log = logging.getLogger(__name__)
MANUAL_MARKER = "manually set"


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    if getattr(dag_run, "dag_id", None) != DAG_ID:
        return
    try:
        from export_tx.control import close_after_run_failed
        from export_tx.store import HeaderStore

        # Only the record, here in the scheduler's (or api-server's) own loop; the housekeeping DAG
        # removes the files.
        close_after_run_failed(
            HeaderStore.from_settings(), dag_run.run_id, manual=MANUAL_MARKER in (msg or ""), clean=False
        )
    except Exception:  # a listener must never break the scheduler or the api-server
        log.exception("could not close the export transaction of run %s", getattr(dag_run, "run_id", "?"))
