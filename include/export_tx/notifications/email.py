"""The e-mail channel: the smtp provider's connection ``smtp_default``, the messages announcing a
finished or failed export, and the failure e-mail sent at once."""

from __future__ import annotations

import html
import logging

from export_tx import config
from export_tx.notifications import download_url, record, status_url
from export_tx.states import NotificationState
from export_tx.storage import human_size
from export_tx.store import Header, HeaderStore, utcnow

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"


def mail_from() -> str:
    return config.mail_from()


def smtp_configured(conn_id: str = SMTP_CONN_ID) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException and friends: no mail server configured
        return False
    return True


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


def send_failure_email(store: HeaderStore, header: Header) -> None:
    """Mail the requester of a failed export at once (no delay). Never raises."""
    if not header.notify_email:
        return
    if not smtp_configured():
        record(store, header.id, NotificationState.SKIPPED, "failure e-mail not sent: no mail server is configured")
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
        record(
            store,
            header.id,
            NotificationState.FAILED,
            f"failure e-mail to {header.notify_email} not sent ({type(exc).__name__})",
        )
        return
    record(
        store,
        header.id,
        NotificationState.SENT,
        f"failure e-mail sent to {header.notify_email}",
        notification_sent_at=utcnow(),
    )
