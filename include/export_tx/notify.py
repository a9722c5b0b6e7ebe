"""Download-aware e-mail notification, in runs of the ``export_notification`` DAG.

After the merge, the export's run triggers one ``export_notification`` run and ends. There,
:class:`WaitForDownloadOrDelaySensor` waits ``notify_delay_minutes`` from the export's end **in
the triggerer** (no worker slot) with :class:`DownloadOrDelayTrigger`, which ends early as soon as
the file has been downloaded. Then :class:`NotifyRequesterOperator` (an ``EmailOperator`` of the
smtp provider) sends the mail — unless the file was downloaded meanwhile. A resend (asked through
the API) neither waits nor cares about downloads. A mail server that refuses or is down marks the
notification ``failed``; the export stays ``SUCCEEDED``. A failed export is mailed at once by
:func:`send_failure_email` from the export's own run.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.smtp.operators.smtp import EmailOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from export_tx.settings import get_settings
from export_tx.storage import human_size
from export_tx.store import Header, HeaderStore, utcnow

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"
# Notification states on the header (design doc), plus "skipped": no mail server configured,
# or the export did not end with a file to announce.
PENDING, SENT, SKIPPED_DOWNLOADED, NOT_REQUESTED, FAILED, SKIPPED = (
    "pending", "sent", "skipped_downloaded", "not_requested", "failed", "skipped",
)  # fmt: skip


def _poll_seconds() -> float:
    return float(os.environ.get("EXPORT_TX_NOTIFY_POLL_SECONDS", "15"))


def mail_from() -> str:
    return os.environ.get("EXPORT_TX_MAIL_FROM", "exports@localhost")


def smtp_configured(conn_id: str = SMTP_CONN_ID) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException and friends: no mail server configured
        return False
    return True


def download_url(tx_id: str) -> str:
    from urllib.parse import quote

    return f"{get_settings().public_base_url}/exports/v1/transactions/{quote(tx_id, safe='')}/download"


def status_url(tx_id: str) -> str:
    from urllib.parse import quote

    return f"{get_settings().public_base_url}/exports/v1/transactions/{quote(tx_id, safe='')}"


def ready_email(header: Header) -> tuple[str, str]:
    """Subject and HTML body announcing a finished export."""
    link = download_url(header.id)
    subject = f"Your export {header.definition} is ready ({header.result_rows or 0:,} rows)"
    body = (
        f"<p>Your export <b>{html.escape(header.definition)}</b> is ready.</p>"
        f"<ul><li>Rows: {header.result_rows or 0:,}</li><li>Size: {human_size(header.result_bytes or 0)}</li>"
        f"<li>SHA-256: {header.result_sha256}</li>"
        f"<li>Available until: {header.expires_at:%Y-%m-%d %H:%M} UTC</li>"
        f"<li>Token: {html.escape(header.id)}</li></ul>"
        f'<p>Download: <a href="{html.escape(link)}">{html.escape(link)}</a></p>'
    )
    return subject, body


def failure_email(header: Header) -> tuple[str, str]:
    subject = f"Your export {header.definition} failed"
    logs = status_url(header.id) + "/logs"
    body = (
        f"<p>Your export <b>{html.escape(header.definition)}</b> failed.</p>"
        f"<p>{html.escape(header.error or 'no message')}</p>"
        f"<p>Token: {html.escape(header.id)}. Processing log: "
        f'<a href="{html.escape(logs)}">{html.escape(logs)}</a></p>'
    )
    return subject, body


def record(store: HeaderStore, tx_id: str, state: str, message: str, **values: Any) -> None:
    store.update(tx_id, notification_state=state, **values)
    store.add_event(tx_id, "notification", message, {"notification": state})


def send_failure_email(store: HeaderStore, header: Header) -> None:
    """Mail the requester of a failed export at once (no delay). Never raises."""
    if not header.notify_email:
        return
    if not smtp_configured():
        record(store, header.id, SKIPPED, "failure e-mail not sent: no mail server is configured")
        return
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    subject, body = failure_email(header)
    try:
        with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as hook:
            hook.send_email_smtp(
                to=[a.strip() for a in header.notify_email.split(",")],
                subject=subject,
                html_content=body,
                from_email=mail_from(),
            )
    except Exception as exc:
        log.exception("failure e-mail not sent")
        record(store, header.id, FAILED, f"failure e-mail to {header.notify_email} not sent ({type(exc).__name__})")
        return
    record(store, header.id, SENT, f"failure e-mail sent to {header.notify_email}", notification_sent_at=utcnow())


class DownloadOrDelayTrigger(BaseTrigger):
    """Fires when the transaction's file is downloaded or when ``deadline`` passes."""

    def __init__(self, tx_id: str, deadline: str, poll_seconds: float = 15.0) -> None:
        super().__init__()
        self.tx_id = tx_id
        self.deadline = deadline
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"tx_id": self.tx_id, "deadline": self.deadline, "poll_seconds": self.poll_seconds},
        )

    def _downloaded_at(self) -> datetime | None:
        header = HeaderStore.from_settings().find(self.tx_id)
        return None if header is None else header.downloaded_at

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            downloaded = await asyncio.to_thread(self._downloaded_at)
            if downloaded is not None:
                yield TriggerEvent({"tx_id": self.tx_id, "downloaded": True, "at": downloaded.isoformat()})
                return
            remaining = (deadline - utcnow()).total_seconds()
            if remaining <= 0:
                yield TriggerEvent({"tx_id": self.tx_id, "downloaded": False})
                return
            await asyncio.sleep(min(self.poll_seconds, remaining))


def _truthy(value: Any) -> bool:
    """A templated flag: rendered Jinja is text."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


class WaitForDownloadOrDelaySensor(BaseSensorOperator):
    """Wait ``notify_delay_minutes`` after the export ended, in the triggerer; skip the mail if the
    file was downloaded meanwhile, or if nobody asked for one. A resend does not wait."""

    template_fields = ("tx_id", "resend")

    def __init__(
        self,
        *,
        tx_id: str,
        resend: Any = False,
        poll_seconds: float | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tx_id = tx_id
        self.resend = resend
        self.poll_seconds = poll_seconds
        self.deferrable = deferrable

    def _check(self, context: Any) -> tuple[HeaderStore, Header, datetime]:
        from airflow.sdk.exceptions import AirflowSkipException

        store = HeaderStore.from_settings()
        header = store.find(self.tx_id)
        if header is None:
            raise AirflowSkipException("no such transaction")
        if not header.notify_email:
            raise AirflowSkipException("no notify_email was given")
        if header.state.value != "SUCCEEDED":
            raise AirflowSkipException(f"the export is {header.state.value}")
        if not smtp_configured():
            record(store, header.id, SKIPPED, f"e-mail not sent: no mail server is configured ({SMTP_CONN_ID})")
            raise AirflowSkipException("no mail server configured")
        if _truthy(self.resend):
            return store, header, utcnow()  # asked for again: no wait, downloaded or not
        if header.downloaded_at is not None:
            record(store, header.id, SKIPPED_DOWNLOADED, "e-mail not sent: the file was already downloaded")
            raise AirflowSkipException("already downloaded")
        deadline = (header.finished_at or utcnow()) + timedelta(minutes=header.notify_delay_minutes)
        return store, header, deadline

    def poke(self, context: Any) -> bool:
        _store, _header, deadline = self._check(context)
        return utcnow() >= deadline

    def execute(self, context: Any) -> None:
        if not self.deferrable:
            super().execute(context)
            return
        _store, header, deadline = self._check(context)
        if utcnow() >= deadline:
            return
        self.defer(
            trigger=DownloadOrDelayTrigger(
                header.id, deadline.isoformat(), self.poll_seconds if self.poll_seconds else _poll_seconds()
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        if event and event.get("downloaded"):
            record(HeaderStore.from_settings(), self.tx_id, SKIPPED_DOWNLOADED,
                   "e-mail not sent: the file was downloaded during the delay")  # fmt: skip
            raise AirflowSkipException("downloaded during the delay")


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
        if header.downloaded_at is not None and not _truthy(self.resend):
            record(store, header.id, SKIPPED_DOWNLOADED, "e-mail not sent: the file was already downloaded")
            raise AirflowSkipException("already downloaded")
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
                record(store, header.id, FAILED, f"e-mail to {header.notify_email} could not be sent ({reason})")
            else:
                store.add_event(header.id, "retry", f"e-mail to {header.notify_email} not sent yet ({reason}); "
                                f"attempt {try_number} of {max_tries + 1}, retrying")  # fmt: skip
            raise
        again = " again, as asked" if _truthy(self.resend) else ""
        record(store, header.id, SENT, f"e-mail sent{again} to {header.notify_email}", notification_sent_at=utcnow())


class RequestNotification(TriggerDagRunOperator):
    """Starts the export's e-mail as a run of ``export_notification`` (run id ``notify__<token>``)
    when the request asked for one and the export succeeded; otherwise it succeeds doing nothing,
    so a good export's graph has no skipped (pink) task in it."""

    def execute(self, context: Any) -> Any:
        from export_tx.settings import notification_run_id
        from export_tx.states import State

        run_id = context["run_id"]
        header = HeaderStore.from_settings().get(run_id)
        if header.state != State.SUCCEEDED or not header.notify_email:
            self.log.info("no e-mail was asked for: nothing to start")
            return None
        self.trigger_run_id = notification_run_id(run_id)
        return super().execute(context)
