"""The transaction header's state machine: the one place that says which transition is legal."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    REQUESTED = "REQUESTED"
    RUNNING = "RUNNING"
    MERGING = "MERGING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED})
ACTIVE: frozenset[State] = frozenset(set(State) - TERMINAL)

_FORWARD: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.RUNNING}),
    State.RUNNING: frozenset({State.MERGING}),
    State.MERGING: frozenset({State.SUCCEEDED}),
    # The only change a terminal state allows: retention ended.
    State.SUCCEEDED: frozenset({State.EXPIRED}),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
    State.EXPIRED: frozenset(),
}


class IllegalTransition(Exception):
    """A state change the state machine refuses."""

    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"transaction is {current.value}; it cannot become {target.value}")
        self.current = current
        self.target = target


def allowed(current: State, target: State) -> bool:
    """Whether ``current → target`` is a legal transition (a repeat of the same state is not)."""
    if target in (State.FAILED, State.CANCELLED):
        return current in ACTIVE
    return target in _FORWARD[current]


def sources_of(target: State) -> frozenset[State]:
    """Every state from which ``target`` may be reached: used for compare-and-set updates."""
    return frozenset(s for s in State if allowed(s, target))


def check(current: State, target: State) -> None:
    if not allowed(current, target):
        raise IllegalTransition(current, target)
