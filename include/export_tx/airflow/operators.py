"""Operators: sending the requester's e-mail, delivering the webhook, and starting both as a run
of their own."""

from __future__ import annotations

from typing import Any

from airflow.providers.smtp.operators.smtp import EmailOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import BaseOperator

from export_tx.airflow.sensors import skip_downloaded, truthy
from export_tx.notifications import record
from export_tx.notifications.email import SMTP_CONN_ID, mail_from, ready_email
from export_tx.states import NotificationState, WebhookState
from export_tx.store import HeaderStore, utcnow


class NotifyRequesterOperator(EmailOperator):
    """The smtp provider's EmailOperator, addressed and worded from the transaction header.

    Checks for a download once more right before sending (not for a resend); records ``sent``
    or ``failed``.
    """

    template_fields = (*EmailOperator.template_fields, "tx_id", "resend")

    def __init__(self, *, tx_id: str, resend: Any = False, **kwargs: Any) -> None:
        kwargs.setdefault("to", "placeholder@localhost")  # replaced from the header at run time
        kwargs.setdefault("conn_id", SMTP_CONN_ID)
        super().__init__(**kwargs)
        self.tx_id = tx_id
        self.resend = resend

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        store = HeaderStore.from_settings()
        header = store.get(self.tx_id)
        if header.state.value != "SUCCEEDED":
            raise AirflowSkipException(f"the export is {header.state.value}")
        if header.downloaded_at is not None and not truthy(self.resend):
            skip_downloaded(store, header.id)
        self.to = [a.strip() for a in (header.notify_email or "").split(",") if a.strip()]
        self.subject, self.html_content = ready_email(header)
        self.from_email = self.from_email or mail_from()
        ti = context.get("ti")
        try:
            super().execute(context)
        except Exception as exc:
            try_number = int(getattr(ti, "try_number", 1) or 1)
            max_tries = int(getattr(ti, "max_tries", 0) or 0)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
            if try_number > max_tries:
                record(
                    store,
                    header.id,
                    NotificationState.FAILED,
                    f"e-mail to {header.notify_email} could not be sent ({reason})",
                )
            else:
                store.add_event(header.id, "retry", f"e-mail to {header.notify_email} not sent yet ({reason}); "
                                f"attempt {try_number} of {max_tries + 1}, retrying")  # fmt: skip
            raise
        again = " again, as asked" if truthy(self.resend) else ""
        record(
            store,
            header.id,
            NotificationState.SENT,
            f"e-mail sent{again} to {header.notify_email}",
            notification_sent_at=utcnow(),
        )


class WebhookNotDelivered(Exception):
    """A transient failure of a webhook delivery (lost connection, timeout, 429, 5xx): Airflow retries."""


class DeliverWebhookOperator(BaseOperator):
    """POSTs the signed ``export.succeeded`` event to the request's webhook, at once (no delay, a
    download changes nothing). Transient failures are raised for Airflow's retries (exponential
    backoff); a final answer (4xx but 429, a redirect, a URL no longer allowed) fails without one.
    A resend of the e-mail does not deliver the webhook again."""

    template_fields = ("tx_id", "resend")

    def __init__(self, *, tx_id: str, resend: Any = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tx_id = tx_id
        self.resend = resend

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from export_tx.notifications import webhook

        if truthy(self.resend):
            raise AirflowSkipException("an e-mail sent again: the webhook is not")
        store = HeaderStore.from_settings()
        header = store.find(self.tx_id)
        if header is None or not header.webhook_url:
            raise AirflowSkipException("no notify_webhook was given")
        if header.state.value != "SUCCEEDED":
            raise AirflowSkipException(f"the export is {header.state.value}")
        if header.webhook_state != WebhookState.PENDING:
            # A cleared task: delivered (or given up) already; receivers would get it twice.
            raise AirflowSkipException(f"the webhook is {header.webhook_state} already")
        ti = context.get("ti")
        last = int(getattr(ti, "try_number", 1) or 1) > int(getattr(ti, "max_tries", 0) or 0)
        result = webhook.attempt(store, header, webhook.SUCCEEDED, last=last)
        if result.delivered:
            return
        if result.transient and not last:
            raise WebhookNotDelivered(f"webhook not delivered ({result.detail}); Airflow retries it")
        raise AirflowFailException(f"webhook not delivered ({result.detail})")


class RequestNotification(TriggerDagRunOperator):
    """Starts the export's e-mail and webhook as a run of ``export_notification`` (run id
    ``notify__<token>``) when the request asked for either and the export succeeded; otherwise it
    succeeds doing nothing, so a good export's graph has no skipped (pink) task in it."""

    def execute(self, context: Any) -> Any:
        from export_tx.config import notification_run_id
        from export_tx.states import State

        tx_id = context["run_id"]  # the export's run: its id is the transaction's
        header = HeaderStore.from_settings().get(tx_id)
        if header.state != State.SUCCEEDED or not (header.notify_email or header.webhook_url):
            self.log.info("no e-mail or webhook was asked for: nothing to start")
            return None
        self.trigger_run_id = notification_run_id(tx_id)
        return super().execute(context)


class HoldSnapshot(BaseOperator):
    """Holds a point-in-time export's snapshot of its PostgreSQL source (``conn_id``) from Airflow's
    triggerer — deferred, so no worker slot waits — until the export no longer reads it
    (:mod:`export_tx.snapshots`). Mapped over what ``begin_transaction`` hands it: one instance for a
    definition with ``consistent_snapshot``, none for any other export (no process starts). Never
    fails: a snapshot that cannot be taken, or is lost, fails the steps that needed it, saying so."""

    def __init__(self, *, conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def execute(self, context: Any) -> None:
        from export_tx import config, snapshots
        from export_tx.airflow.context import runs_in_process
        from export_tx.airflow.triggers import HoldSnapshotTrigger

        if runs_in_process(context):
            # dag.test() would run the trigger inline and wait on it for ever: begin_transaction holds
            # the snapshot in this process there.
            self.log.info("in-process run (dag.test): the snapshot is held by this process, not the triggerer")
            return
        take_until, hold_until = snapshots.hold_window()
        trigger = HoldSnapshotTrigger(context["run_id"], self.conn_id, take_until.isoformat(), hold_until.isoformat(),
                                      config.snapshot_poll_seconds())  # fmt: skip
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        event = event or {}
        self.log.info("the snapshot's hold ended (%s): %s", event.get("outcome"), event.get("message"))
