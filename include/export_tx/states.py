"""The states of a transaction, of its batches and of its notification; the transaction's state
machine is the one place that says which transition is legal."""

from __future__ import annotations

from enum import StrEnum

from export_tx.errors import IllegalTransition


class State(StrEnum):
    REQUESTED = "REQUESTED"
    RUNNING = "RUNNING"
    MERGING = "MERGING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class BatchState(StrEnum):
    """A batch of the plan: planned until its part is written and its rows recorded."""

    PLANNED = "PLANNED"
    DONE = "DONE"


class NotificationState(StrEnum):
    """The requester's notification, as the header shows it (``notification_state``)."""

    NOT_REQUESTED = "not_requested"
    PENDING = "pending"
    SENT = "sent"
    #: Not sent: the file was downloaded during the delay.
    SKIPPED_DOWNLOADED = "skipped_downloaded"
    #: Not sent: no channel is configured (no mail server), or the export ended without a file.
    SKIPPED = "skipped"
    FAILED = "failed"


class WebhookState(StrEnum):
    """The requester's webhook, as the header shows it (``webhook_state``)."""

    NOT_REQUESTED = "not_requested"
    #: Asked for, not delivered yet (waiting for the export, or between retries).
    PENDING = "pending"
    DELIVERED = "delivered"
    #: Given up: a final answer (4xx but 429, a redirect, a URL no longer allowed) or the retries ran out.
    FAILED = "failed"


class SnapshotState(StrEnum):
    """The source snapshot of a point-in-time export (``consistent_snapshot``), as the header shows
    it (``snapshot_state``; NULL: the definition does not ask for one)."""

    #: Asked for; the holder (Airflow's triggerer) has not taken it yet. Planning waits.
    PENDING = "pending"
    #: Taken and held open: planning and every batch read the source as it was then.
    HELD = "held"
    #: The export no longer reads the source (merging or ended); the holder closed it.
    RELEASED = "released"
    #: Its holder's session ended while batches still had to read: they fail rather than read another moment.
    LOST = "lost"
    #: It could not be taken (no PostgreSQL source, or the holder never managed to); planning fails.
    UNAVAILABLE = "unavailable"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED})
ACTIVE: frozenset[State] = frozenset(set(State) - TERMINAL)

_FORWARD: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.RUNNING}),
    State.RUNNING: frozenset({State.MERGING}),
    State.MERGING: frozenset({State.SUCCEEDED}),
    # The only change a terminal state allows: retention ended.
    State.SUCCEEDED: frozenset({State.EXPIRED}),
    # Resumed (POST …/retry): the batches that did not finish run again, in the same transaction.
    State.FAILED: frozenset({State.RUNNING}),
    State.CANCELLED: frozenset(),
    State.EXPIRED: frozenset(),
}


def allowed(current: State, target: State) -> bool:
    """Whether ``current → target`` is a legal transition (a repeat of the same state is not)."""
    if target in (State.FAILED, State.CANCELLED):
        return current in ACTIVE
    return target in _FORWARD[current]


#: The states a transaction can be resumed from (``POST …/retry``).
RESUMABLE: frozenset[State] = frozenset(s for s in State if State.RUNNING in _FORWARD[s] and s in TERMINAL)


def check(current: State, target: State) -> None:
    if not allowed(current, target):
        raise IllegalTransition(current, target)
