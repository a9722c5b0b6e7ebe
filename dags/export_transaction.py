"""
### export_transaction — one run is one export transaction

The run id is the transaction's **token**. The run conf (this form) names a registered export
definition and its parameters; the run then

1. **begin_transaction** — validates the request and creates/starts the transaction header;
2. **plan_batches** — asks the source for the query's column types (fixed for the whole transaction:
   the source decides, the definition may only override without losing values), counts the rows
   and splits them into batches of ~`batch_size` rows by count;
3. **export_batch** (one mapped task per batch) — streams the batch's rows as Arrow, in the plan's
   types, into a Parquet part;
4. **merge_parts** — merges the parts in order into one Parquet file (the plan's schema, also for zero
   rows), checks every row is there and publishes it atomically; the header becomes `SUCCEEDED`;
5. **wait_for_download_or_delay** — a deferrable sensor: waits `notify_delay_minutes` in the triggerer,
   ending early (and skipping the mail) as soon as the file is downloaded;
6. **notify_requester** — the smtp provider's EmailOperator mails the download link to `notify_email`;
7. **finalize_transaction** — runs after the others; skipped when the export succeeded, otherwise it ends
   the header `FAILED` with the message of the step that failed, removes the parts and mails the failure.

Only transient failures (connections, timeouts, locks, storage) are retried; a mistake in the request
or the definition ends the transaction at once with a message naming the field or column.
Progress and the processing log are in the transaction header store (`export_header`, `export_event`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule, dag, get_current_context, task

from export_tx.dag_params import build_params
from export_tx.notify import NotifyRequesterOperator, WaitForDownloadOrDelaySensor
from export_tx.settings import DAG_ID, task_routing

RETRY_DELAY = timedelta(seconds=float(os.environ.get("EXPORT_TX_RETRY_DELAY_SECONDS", "30")))
ROUTING = task_routing()


def _store() -> Any:
    from export_tx.store import HeaderStore

    return HeaderStore.from_settings()


@task(retries=2)
def begin_transaction() -> str:
    from export_tx import pipeline
    from export_tx.runtime import reporting, requester, triggered_by

    context = get_current_context()
    run_id, store = context["run_id"], _store()
    with reporting(store, run_id, "the request", context):
        conf, who = dict(context["params"]), requester(context)
        header = pipeline.begin(store, run_id, conf, who, triggered_by=triggered_by(context))
    return header.id


@task(retries=2)
def plan_batches() -> list[int]:
    from export_tx import pipeline
    from export_tx.runtime import reporting

    context = get_current_context()
    run_id, store = context["run_id"], _store()
    with reporting(store, run_id, "planning", context):
        return pipeline.plan(store, run_id)


@task(retries=2, map_index_template="{{ batch_label }}", **ROUTING["batch"])
def export_batch(batch_no: int) -> dict[str, Any]:
    from export_tx import pipeline
    from export_tx.runtime import reporting

    context = get_current_context()
    run_id, store = context["run_id"], _store()
    with reporting(store, run_id, f"batch {batch_no}", context):
        context["batch_label"] = pipeline.batch_label(store, run_id, batch_no)  # type: ignore[typeddict-unknown-key]
        return pipeline.export_batch(store, run_id, batch_no).as_xcom()


@task(retries=3, trigger_rule=TriggerRule.NONE_FAILED, **ROUTING["merge"])
def merge_parts() -> dict[str, Any]:
    from export_tx import pipeline
    from export_tx.runtime import reporting

    context = get_current_context()
    run_id, store = context["run_id"], _store()
    with reporting(store, run_id, "merging", context):
        return pipeline.merge(store, run_id).as_xcom()


@task(retries=3, trigger_rule=TriggerRule.ALL_DONE)
def finalize_transaction() -> None:
    """After every other task: skip if the export succeeded, else end it FAILED (and fail the run)."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from export_tx import pipeline

    context = get_current_context()
    outcome = pipeline.finalize(_store(), context["run_id"])
    if outcome.succeeded:
        raise AirflowSkipException("the export succeeded")
    raise AirflowFailException(outcome.message)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    params=build_params(),
    doc_md=__doc__,
    tags=["export"],
    max_active_runs=16,
    default_args={"retry_delay": RETRY_DELAY, "owner": "data-platform"},
)
def export_transaction() -> None:
    begun = begin_transaction()
    batch_nos = plan_batches()
    parts = export_batch.expand(batch_no=batch_nos)
    merged = merge_parts()
    waited = WaitForDownloadOrDelaySensor(task_id="wait_for_download_or_delay", retries=2)
    mailed = NotifyRequesterOperator(task_id="notify_requester", retries=2)
    begun >> batch_nos >> parts >> merged >> waited >> mailed
    # The only leaf: the run's state follows the export's, never the e-mail's.
    [begun, batch_nos, parts, merged, waited, mailed] >> finalize_transaction()


export_transaction()
