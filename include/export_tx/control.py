"""Operations on a transaction from outside its run: cancel, record a download, close after
Airflow ended the run. Used by the ``/exports`` API and the Airflow listener."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from export_tx import formats, storage
from export_tx.states import NotificationState, State
from export_tx.store import Header, HeaderStore, utcnow

log = logging.getLogger(__name__)


def remove_files(header: Header) -> bool:
    """Remove what storage holds of an ended transaction: its parts and temporary file — and, when
    it did not succeed, its result too (a merge may have published it just before the end).
    True when something was removed."""
    if header.state == State.SUCCEEDED:
        removed = storage.remove_tree(storage.parts_dir(header.id))
        tmp = storage.temp_result_path(header.id, header.definition, _suffix(header))
        if tmp.exists():
            storage.remove(tmp)
            removed = True
        return removed
    return storage.remove_tree(storage.tx_root(header.id))


def _suffix(header: Header) -> str:
    """The file suffix of the header's format (a format this version does not know: Parquet's,
    the only one before formats could be chosen)."""
    known = formats.FORMATS.get(header.format or formats.DEFAULT)
    return (known or formats.get()).suffix


def cleanup(store: HeaderStore, header: Header, why: str) -> None:
    """Remove the files of an ended transaction (:func:`remove_files`) and say so in its log."""
    if remove_files(header):
        what = "parts" if header.state == State.SUCCEEDED else "files"
        store.add_event(header.id, "cleanup", f"removed its {what} ({why})")


def cancel(store: HeaderStore, tx_id: str, actor: str, stop_run: Callable[[str], object]) -> bool:
    """CANCELLED, then stop the Airflow run, then clean up. False if it had already ended."""
    header = store.get(tx_id)
    extra: dict[str, Any] = (
        {"notification_state": NotificationState.SKIPPED}
        if header.notification_state == NotificationState.PENDING
        else {}
    )
    if not store.fail(tx_id, f"cancelled by {actor}", state=State.CANCELLED, cancelled_by=actor, **extra):
        return False
    try:
        stop_run(tx_id)
    except Exception as exc:  # the header is the source of truth; tasks check it and stop themselves
        log.exception("could not stop the Airflow run %s", tx_id)
        store.add_event(tx_id, "info", f"the Airflow run could not be stopped at once ({type(exc).__name__}); "
                        "its remaining tasks stop on their own and the run ends failed")  # fmt: skip
    cleanup(store, store.get(tx_id), "cancelled")
    return True


def record_download(store: HeaderStore, tx_id: str, actor: str) -> None:
    header = store.get(tx_id)
    if header.downloaded_at is None:
        store.update(tx_id, downloaded_at=utcnow())
    store.add_event(tx_id, "download", f"downloaded by {actor}")


def close_after_run_failed(store: HeaderStore, tx_id: str, manual: bool, clean: bool = True) -> bool:
    """Airflow ended the run failed while the header was still active.

    Marked failed by hand (UI or REST ``PATCH … {"state": "failed"}``) → CANCELLED; otherwise
    (e.g. a worker lost before the finalizing task ran) → FAILED. With ``clean`` its files are
    removed now; the run listener only records (housekeeping removes the files).
    """
    header = store.find(tx_id)
    if header is None or header.terminal:
        return False
    extra: dict[str, Any] = (
        {"notification_state": NotificationState.SKIPPED}
        if header.notification_state == NotificationState.PENDING
        else {}
    )
    if manual:
        changed = store.fail(tx_id, "cancelled in Airflow: the run was marked failed", state=State.CANCELLED,
                             cancelled_by="airflow", **extra)  # fmt: skip
    else:
        changed = store.fail(tx_id, "the Airflow run ended failed before the export finished; "
                             "the Airflow task logs have the details", **extra)  # fmt: skip
    if changed and clean:
        cleanup(store, store.get(tx_id), "run ended")
    return changed
