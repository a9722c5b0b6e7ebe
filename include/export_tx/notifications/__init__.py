"""Telling the requester: the channels (one module each; ``email`` today), the links every
message carries, and the notification's state on the header.

The delayed, download-aware wait and the sending run in the ``export_notification`` DAG
(:mod:`export_tx.airflow.sensors`, :mod:`export_tx.airflow.operators`); a failed export is told
at once, from the export's own run (:func:`export_tx.notifications.email.send_failure_email`).
"""

from __future__ import annotations

from typing import Any

from export_tx.config import get_settings
from export_tx.states import NotificationState
from export_tx.store import HeaderStore

__all__ = ["NotificationState", "download_url", "record", "status_url"]


def download_url(tx_id: str) -> str:
    from urllib.parse import quote

    return f"{get_settings().public_base_url}/exports/v1/transactions/{quote(tx_id, safe='')}/download"


def status_url(tx_id: str) -> str:
    from urllib.parse import quote

    return f"{get_settings().public_base_url}/exports/v1/transactions/{quote(tx_id, safe='')}"


def record(store: HeaderStore, tx_id: str, state: NotificationState, message: str, **values: Any) -> None:
    store.update(tx_id, notification_state=state, **values)
    store.add_event(tx_id, "notification", message, {"notification": state})
