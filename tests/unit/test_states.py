from __future__ import annotations

import pytest

from export_tx.errors import IllegalTransition
from export_tx.states import ACTIVE, RESUMABLE, TERMINAL, State, allowed, check

S = State
# (from, to, legal) — the design doc's state machine, exhaustively for the interesting pairs.
TABLE = [
    (S.REQUESTED, S.RUNNING, True),
    (S.RUNNING, S.MERGING, True),
    (S.MERGING, S.SUCCEEDED, True),
    (S.SUCCEEDED, S.EXPIRED, True),
    (S.REQUESTED, S.FAILED, True),
    (S.RUNNING, S.FAILED, True),
    (S.MERGING, S.FAILED, True),
    (S.REQUESTED, S.CANCELLED, True),
    (S.RUNNING, S.CANCELLED, True),
    (S.MERGING, S.CANCELLED, True),
    (S.REQUESTED, S.MERGING, False),
    (S.REQUESTED, S.SUCCEEDED, False),
    (S.RUNNING, S.SUCCEEDED, False),
    (S.RUNNING, S.REQUESTED, False),
    (S.MERGING, S.RUNNING, False),
    (S.SUCCEEDED, S.FAILED, False),
    (S.SUCCEEDED, S.CANCELLED, False),
    (S.SUCCEEDED, S.RUNNING, False),
    (S.FAILED, S.RUNNING, True),  # resumed: POST …/retry
    (S.FAILED, S.CANCELLED, False),
    (S.FAILED, S.SUCCEEDED, False),
    (S.CANCELLED, S.FAILED, False),
    (S.CANCELLED, S.RUNNING, False),
    (S.EXPIRED, S.SUCCEEDED, False),
    (S.FAILED, S.EXPIRED, False),
    (S.RUNNING, S.RUNNING, False),
]


@pytest.mark.parametrize(("current", "target", "legal"), TABLE)
def test_transition_table(current: State, target: State, legal: bool) -> None:
    assert allowed(current, target) is legal
    if legal:
        check(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value}.*{target.value}"):
            check(current, target)


def test_terminal_states_never_change_except_expiry_and_resume() -> None:
    changes = {S.SUCCEEDED: {S.EXPIRED}, S.FAILED: {S.RUNNING}}
    for current in TERMINAL:
        reachable = {t for t in State if allowed(current, t)}
        assert reachable == changes.get(current, set())


def test_only_a_failed_transaction_can_be_resumed() -> None:
    assert RESUMABLE == {S.FAILED}


def test_every_active_state_can_fail_or_be_cancelled() -> None:
    def sources_of(target: State) -> set[State]:
        return {s for s in State if allowed(s, target)}

    assert sources_of(S.FAILED) == ACTIVE
    assert sources_of(S.CANCELLED) == ACTIVE
    assert sources_of(S.SUCCEEDED) == {S.MERGING}
