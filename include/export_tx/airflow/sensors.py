"""Sensors: the delayed e-mail's wait (deferred to the triggerer), which ends early when the file
is downloaded."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator

from export_tx import config
from export_tx.airflow.triggers import DownloadOrDelayTrigger
from export_tx.notifications import record
from export_tx.notifications.email import SMTP_CONN_ID, smtp_configured
from export_tx.states import NotificationState
from export_tx.store import Header, HeaderStore, utcnow

#: The one message for a skipped e-mail, whichever saw the download: the trigger's event (the
#: usual way), a later try's check (a try that failed after the event) or the e-mail task itself.
SKIPPED_DOWNLOADED = "e-mail not sent: the file was downloaded before it went out"


def skip_downloaded(store: HeaderStore, tx_id: str) -> NoReturn:
    """The file was downloaded before the e-mail went out: record it and skip sending."""
    from airflow.sdk.exceptions import AirflowSkipException

    record(store, tx_id, NotificationState.SKIPPED_DOWNLOADED, SKIPPED_DOWNLOADED)
    raise AirflowSkipException("the file was downloaded before the e-mail went out")


def truthy(value: Any) -> bool:
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
            record(
                store,
                header.id,
                NotificationState.SKIPPED,
                f"e-mail not sent: no mail server is configured ({SMTP_CONN_ID})",
            )
            raise AirflowSkipException("no mail server configured")
        if truthy(self.resend):
            return store, header, utcnow()  # asked for again: no wait, downloaded or not
        if header.downloaded_at is not None:
            skip_downloaded(store, header.id)
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
                header.id,
                deadline.isoformat(),
                self.poll_seconds if self.poll_seconds else config.notify_poll_seconds(),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if event and event.get("downloaded"):
            skip_downloaded(HeaderStore.from_settings(), self.tx_id)
