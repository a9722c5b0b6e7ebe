"""
### export_notification — the delayed, download-aware e-mail and the webhook of one export, in a run of its own

Triggered by `export_transaction` after its file is published (one run per notification, run id
`notify__<token>`), or by `POST /exports/v1/transactions/{token}/notify` to send it again. Its wait
never holds an export back: the export's own run has ended by then.

1. **wait_for_download_or_delay** — a deferrable sensor: waits `notify_delay_minutes` after the
   export finished, in the triggerer (no worker slot), ending early — and skipping the mail — as soon
   as the file is downloaded (a resend does not wait);
2. **notify_requester** — the smtp provider's EmailOperator mails the download link to `notify_email`;
3. **deliver_webhook** — beside them, at once (no delay, whether downloaded or not): POSTs the signed
   `export.succeeded` event to `notify_webhook`; a lost connection, a timeout, 429 or 5xx is retried
   with exponential backoff, any other answer is final. Skipped without a webhook, and on a resend.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from export_tx.airflow.operators import DeliverWebhookOperator, NotifyRequesterOperator
from export_tx.airflow.sensors import WaitForDownloadOrDelaySensor
from export_tx.config import (
    NOTIFICATION_DAG_ID,
    notification_max_active,
    retry_delay_seconds,
    webhook_retries,
    webhook_retry_delay_seconds,
)

TX = "{{ params.transaction }}"
RESEND = "{{ params.resend }}"


@dag(
    dag_id=NOTIFICATION_DAG_ID,
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["export"],
    # Each run mostly waits, deferred in the triggerer: many may wait at once.
    max_active_runs=notification_max_active(),
    max_active_tasks=notification_max_active(),
    params={
        "transaction": Param(
            "",
            type="string",
            maxLength=250,
            title="Transaction token",
            description="The export transaction whose e-mail this run sends.",
        ),
        "resend": Param(
            False,
            type="boolean",
            title="Send again now",
            description="Send at once, even if the file was downloaded (a requester asked).",
        ),
    },  # fmt: skip
    default_args={"owner": "data-platform", "retry_delay": timedelta(seconds=retry_delay_seconds())},
)
def export_notification() -> None:
    waited = WaitForDownloadOrDelaySensor(task_id="wait_for_download_or_delay", tx_id=TX, resend=RESEND, retries=2)
    mailed = NotifyRequesterOperator(task_id="notify_requester", tx_id=TX, resend=RESEND, retries=2)
    waited >> mailed
    # Not after the wait: a webhook is for machines, which want the event as soon as it happens.
    DeliverWebhookOperator(
        task_id="deliver_webhook",
        tx_id=TX,
        resend=RESEND,
        retries=webhook_retries(),
        retry_delay=timedelta(seconds=webhook_retry_delay_seconds()),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(hours=1),
    )


export_notification()
