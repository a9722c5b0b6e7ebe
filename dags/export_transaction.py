"""
### export_transaction — one run is one export transaction

The run id is the transaction's **token**. The run conf (this form) names a registered export
definition and its parameters; the run then

1. **begin_transaction** — validates the request and creates/starts the transaction header;
   **hold_snapshot** — only for a point-in-time export (a definition with `consistent_snapshot`): holds
   one snapshot of the PostgreSQL source from the triggerer until the last batch has read, so planning
   and every batch read the source as it was at one moment (skipped for any other export);
2. **plan_batches** — asks the source for the query's column types (fixed for the whole transaction:
   the source decides, the definition may only override without losing values), counts the rows
   and splits them into batches of ~`batch_size` rows by count;
3. **export_batch** (one mapped task per batch) — streams the batch's rows as Arrow, in the plan's
   types, into a Parquet part;
4. **merge_parts** — merges the parts in order into one Parquet file (the plan's schema, also for zero
   rows), checks every row is there and publishes it atomically; the header becomes `SUCCEEDED`;
5. **request_notification** — with a `notify_email`, starts the delayed, download-aware e-mail as a
   run of `export_notification` (its wait never holds this run open); without one it does nothing;
6. **finalize_transaction** — runs after the others; does nothing when the export succeeded, otherwise it ends
   the header `FAILED` with the message of the step that failed, removes its files and mails the failure.

Only transient failures (connections, timeouts, locks, storage) are retried; a mistake in the request
or the definition ends the transaction at once with a message naming the field or column.
Progress and the processing log are in the transaction header store (`export_header`, `export_event`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule, dag, get_current_context, task

from export_tx.airflow.operators import HoldSnapshot, RequestNotification
from export_tx.airflow.params import build_params
from export_tx.config import DAG_ID, NOTIFICATION_DAG_ID, retry_delay_seconds, task_routing

RETRY_DELAY = timedelta(seconds=retry_delay_seconds())
ROUTING = task_routing()


@task(retries=2)
def begin_transaction() -> list[str]:
    """Returns the source to hold a snapshot of for a point-in-time export (a connection id), else nothing."""
    from export_tx import pipeline, snapshots
    from export_tx.airflow.context import requester, runs_in_process, transaction_step, triggered_by

    with transaction_step("the request") as (store, tx_id):
        context = get_current_context()
        conf, who = dict(context["params"]), requester(context)
        header = pipeline.begin(store, tx_id, conf, who, triggered_by=triggered_by(context))
        # dag.test() has no triggerer: there the snapshot is held in this process.
        return snapshots.to_hold(store, header, in_process=runs_in_process(context))


@task(retries=2)
def plan_batches() -> list[int]:
    from export_tx import pipeline
    from export_tx.airflow.context import transaction_step

    with transaction_step("planning") as (store, tx_id):
        return pipeline.plan(store, tx_id)


@task(retries=2, map_index_template="{{ batch_label }}", **ROUTING["batch"])
def export_batch(batch_no: int) -> dict[str, Any]:
    from export_tx import pipeline
    from export_tx.airflow.context import transaction_step

    with transaction_step(f"batch {batch_no}") as (store, tx_id):
        label = pipeline.batch_label(store, tx_id, batch_no)
        get_current_context()["batch_label"] = label  # type: ignore[typeddict-unknown-key]
        return pipeline.export_batch(store, tx_id, batch_no).as_xcom()


@task(retries=3, trigger_rule=TriggerRule.NONE_FAILED, **ROUTING["merge"])
def merge_parts() -> dict[str, Any]:
    from export_tx import pipeline
    from export_tx.airflow.context import transaction_step

    with transaction_step("merging") as (store, tx_id):
        return pipeline.merge(store, tx_id).as_xcom()


@task(retries=3, trigger_rule=TriggerRule.ALL_DONE)
def finalize_transaction() -> None:
    """After every other task: nothing to do if the export succeeded, else end it FAILED (and fail the run)."""
    from airflow.sdk.exceptions import AirflowFailException

    from export_tx import pipeline
    from export_tx.store import HeaderStore

    outcome = pipeline.finalize(HeaderStore.from_settings(), get_current_context()["run_id"])
    if outcome.succeeded:
        return  # success, not a skip: a good export's graph is green all through
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
    # Deferred beside the export for as long as it reads its source; never fails (a leaf that
    # cannot change the run's state: the steps that needed the snapshot fail if it is missing).
    HoldSnapshot.partial(task_id="hold_snapshot", retries=2).expand(conn_id=begun)
    batch_nos = plan_batches()
    parts = export_batch.expand(batch_no=batch_nos)
    merged = merge_parts()
    # With a notify_email, the e-mail waits in a run of its own: this run ends when the export ends.
    request_notification = RequestNotification(
        task_id="request_notification",
        trigger_dag_id=NOTIFICATION_DAG_ID,
        trigger_run_id="set when it runs",  # notify__<token>, see RequestNotification
        conf={"transaction": "{{ run_id }}", "resend": False},
        logical_date=None,
        skip_when_already_exists=True,  # a retry finds the run it started
        retries=2,
    )
    begun >> batch_nos >> parts >> merged >> request_notification
    # The only leaf that can fail (hold_snapshot never does): the run's state follows the export's,
    # never the e-mail's.
    [begun, batch_nos, parts, merged, request_notification] >> finalize_transaction()


export_transaction()
