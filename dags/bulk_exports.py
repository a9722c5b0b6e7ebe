"""
### bulk_export__* — scheduled bulk exports declared in `bulk_exports.yaml`

One DAG per entry of the YAML file beside this one (or `EXPORT_TX_BULK_EXPORTS`). Each run records
the interval's transaction header and triggers a normal `export_transaction` run with that id, so
scheduled exports have their own token, progress, log and e-mail like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, get_current_context, task

from export_tx.bulk import BulkExport, load
from export_tx.config import DAG_ID

BULK_FILE = Path(os.environ.get("EXPORT_TX_BULK_EXPORTS", Path(__file__).with_name("bulk_exports.yaml")))


def _build(entry: BulkExport) -> DAG:
    with DAG(
        dag_id=entry.dag_id,
        description=entry.description,
        schedule=entry.schedule,
        start_date=entry.start_date,
        catchup=entry.catchup,
        max_active_runs=1,
        is_paused_upon_creation=entry.paused,
        tags=["export", "bulk"],
        doc_md=__doc__,
        default_args={"owner": "data-platform", "retries": 2},
    ) as dag:

        @task(task_id="request_export")
        def request_export() -> str:
            from airflow.sdk.exceptions import AirflowFailException

            from export_tx.bulk import request_export as record
            from export_tx.errors import BulkRunIdTaken

            context: Any = get_current_context()
            moment = context.get("logical_date") or context["dag_run"].run_after
            try:
                return record(entry, entry.tx_id(moment))
            except BulkRunIdTaken as exc:  # would fail the same way again
                raise AirflowFailException(str(exc)) from exc

        requested = request_export()
        trigger_export = TriggerDagRunOperator(
            task_id="trigger_export",
            trigger_dag_id=DAG_ID,
            trigger_run_id="{{ ti.xcom_pull(task_ids='request_export') }}",
            conf=entry.request.as_conf(),
            logical_date=None,
            skip_when_already_exists=True,
        )
        requested >> trigger_export
    return dag


for _entry in load(BULK_FILE):
    globals()[_entry.dag_id] = _build(_entry)
