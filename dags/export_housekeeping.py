"""
### export_housekeeping — keep the export store honest

Every run (every 15 minutes by default, `EXPORT_TX_HOUSEKEEPING_SCHEDULE`):

* **expire_results** — `SUCCEEDED` past retention: the file is deleted, the header becomes `EXPIRED`
  (download answers 410); a cancelled transaction's partial file past retention is deleted too;
* **remove_leftover_parts** — parts left by `FAILED`, `CANCELLED` or `EXPIRED` transactions (a `FAILED`
  one keeps its finished batches' parts for `EXPORT_TX_RESUME_KEEP_DAYS`, 7 by default: `POST …/retry`);
* **reconcile_runs** — headers still active whose Airflow run ended (e.g. marked failed while no listener
  saw it) or was deleted: closed with a message saying what happened.

Each action writes an event in the transaction's log.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from export_tx.config import DAG_ID

# A cron expression or preset; "none" turns the schedule off (trigger it by hand).
_schedule = os.environ.get("EXPORT_TX_HOUSEKEEPING_SCHEDULE", "*/15 * * * *")
SCHEDULE = None if _schedule.strip().lower() in ("", "none") else _schedule
GRACE = timedelta(seconds=float(os.environ.get("EXPORT_TX_RECONCILE_GRACE_SECONDS", "300")))


def _store() -> Any:
    from export_tx.store import HeaderStore

    return HeaderStore.from_settings()


@task(retries=2)
def expire_results() -> dict[str, object]:
    from export_tx.housekeeping import expire_partials
    from export_tx.housekeeping import expire_results as expire

    store = _store()
    return {**expire(store).as_xcom(), "partials": expire_partials(store).as_xcom()}


@task(retries=2)
def remove_leftover_parts() -> dict[str, object]:
    from export_tx.housekeeping import remove_leftover_parts as remove

    return remove(_store()).as_xcom()


@task(retries=2)
def reconcile_runs() -> dict[str, object]:
    from export_tx.housekeeping import reconcile

    ti = get_current_context()["ti"]

    def run_state(run_id: str) -> str | None:
        # Through the task SDK (workers never touch Airflow's database).
        if ti.get_dr_count(dag_id=DAG_ID, run_ids=[run_id]) == 0:  # type: ignore[attr-defined]
            return None
        state = ti.get_dagrun_state(dag_id=DAG_ID, run_id=run_id)  # type: ignore[attr-defined]
        return str(getattr(state, "value", state))  # a DagRunState enum: its value, e.g. "failed"

    return reconcile(_store(), run_state, grace=GRACE).as_xcom()


@dag(
    dag_id="export_housekeeping",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["export", "housekeeping"],
    default_args={"retry_delay": timedelta(minutes=1), "owner": "data-platform"},
)
def export_housekeeping() -> None:
    reconciled = reconcile_runs()
    # Reconcile first: a closed transaction's parts are then removed in the same run.
    reconciled >> [expire_results(), remove_leftover_parts()]


export_housekeeping()
