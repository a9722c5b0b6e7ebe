"""Housekeeping: expire results past retention, remove parts left behind, and close headers
whose Airflow run ended (or vanished) without closing them. Every action writes an event.

Each function takes the store (and, for reconciliation, a way to ask Airflow about a run) so it
runs the same in the housekeeping DAG and in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from export_tx import storage
from export_tx.config import resume_keep_days
from export_tx.control import close_after_run_failed, remove_files, remove_unfinished_parts
from export_tx.states import ACTIVE, NotificationState, State
from export_tx.store import HeaderStore, utcnow

log = logging.getLogger(__name__)

#: A run state as Airflow reports it, or None when the run does not exist (any more).
RunState = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Report:
    action: str
    transactions: list[str]

    def as_xcom(self) -> dict[str, object]:
        return {"action": self.action, "count": len(self.transactions), "transactions": self.transactions[:50]}


def expire_results(store: HeaderStore) -> Report:
    """SUCCEEDED past ``expires_at`` → file deleted, header EXPIRED (download then answers 410)."""
    done = []
    for header in store.expired(utcnow()):
        if header.result_uri:
            storage.remove(storage.path_of(header.result_uri))
        if store.transition(header.id, State.EXPIRED, f"retention ended at {header.expires_at:%Y-%m-%d %H:%M} UTC; "
                            "the file was deleted"):  # fmt: skip
            done.append(header.id)
    return Report("expired", done)


def expire_partials(store: HeaderStore) -> Report:
    """A cancelled transaction's partial file past ``expires_at`` → deleted (download then answers
    410); the transaction stays CANCELLED."""
    done = []
    for header in store.expired_partials(utcnow()):
        if header.result_uri:
            storage.remove(storage.path_of(header.result_uri))
        store.update(header.id, result_uri=None)
        ended = f"{header.expires_at:%Y-%m-%d %H:%M}" if header.expires_at else "its end"
        store.add_event(header.id, "cleanup", f"the partial file's retention ended at {ended} UTC; it was deleted")
        done.append(header.id)
    return Report("partials_expired", done)


def remove_leftover_parts(store: HeaderStore, lookback: timedelta = timedelta(days=30)) -> Report:
    """Every file of transactions that ended without a result to keep (FAILED, CANCELLED,
    EXPIRED): parts, temporary files, and a result a merge published just before the end. A
    FAILED transaction keeps its finished batches' parts for ``EXPORT_TX_RESUME_KEEP_DAYS``
    (POST …/retry re-runs only the others); a cancelled one its partial file until it expires."""
    done = []
    now = utcnow()
    resumable_since = now - timedelta(days=resume_keep_days())
    ended = store.in_states([State.FAILED, State.CANCELLED, State.EXPIRED], finished_after=now - lookback)
    for header in ended:
        keep = (header.state == State.FAILED and header.finished_at is not None
                and header.finished_at > resumable_since)  # fmt: skip
        removed = remove_files(header, keep_parts=keep)
        if keep:
            removed = remove_unfinished_parts(store, header) or removed
        if removed:
            store.add_event(header.id, "cleanup", f"housekeeping removed the files left by the {header.state.value} "
                            "transaction" + (" but the finished batches' parts (kept for POST …/retry)"
                                             if keep else ""))  # fmt: skip
            done.append(header.id)
    return Report("parts_removed", done)


def reconcile(store: HeaderStore, run_state: RunState, grace: timedelta = timedelta(minutes=5)) -> Report:
    """Headers still active whose Airflow run has ended or was deleted → a terminal, explained state.

    ``grace`` leaves alone headers touched recently (an API request between writing the header
    and creating its run, a task about to update it).
    """
    done = []
    for header in store.in_states(sorted(ACTIVE), updated_before=utcnow() - grace):
        state = run_state(header.id)
        if state in ("queued", "running"):
            continue
        if state is None:
            extra: dict[str, Any] = (
                {"notification_state": NotificationState.SKIPPED}
                if header.notification_state == NotificationState.PENDING
                else {}
            )
            if header.state == State.REQUESTED:  # accepted, but its run was never created (the api-server stopped)
                message = (
                    "the export was accepted but never started (its Airflow run was not created); request it again"
                )
            else:
                message = "the Airflow run of this export no longer exists (deleted); request the export again"
            changed = store.fail(header.id, message, **extra)
            if changed:
                remove_files(store.get(header.id))
        elif state == "failed":  # the Airflow run's state
            changed = close_after_run_failed(store, header.id, manual=False)
        else:  # success without a terminal header: the run finished but the export did not
            changed = store.fail(header.id, f"the Airflow run ended {state} without finishing the export; "
                                 "request the export again")  # fmt: skip
        if changed:
            done.append(header.id)
    return Report("reconciled", done)
