"""The arithmetic of a transaction's place in the line and of its estimated finish (pure functions;
the store's counts and samples are tested in tests/component/store/test_queue_and_history.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from export_tx import estimates
from export_tx.estimates import (
    MAX_SECONDS_LEFT,
    MIN_WINDOW_SECONDS,
    Basis,
    queue_place,
    rate,
    rows_left,
    weighted_median_rate,
)

T0 = datetime(2026, 5, 2, 14, 0, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _estimate(**kw: Any) -> estimates.Estimate | None:
    values: dict[str, Any] = {
        "state": "RUNNING",
        "rows_planned": 10_000,
        "rows_written": 2_000,
        "batches_total": 10,
        "batches_done": 2,
        "batches_started_at": T0,
        "last_batch_at": _at(10),
        "now": _at(15),
        "history_rate": None,
    }
    values.update(kw)
    return estimates.estimate(**values)


# -- the line ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead", "waiting", "expected"),
    [
        (0, 1, (1, 0, 1)),
        (2, 7, (3, 2, 7)),
        # It started between reading its header and counting: never "3rd of 2".
        (2, 2, (3, 2, 3)),
        (0, 0, (1, 0, 1)),
        (-1, 4, (1, 0, 4)),
    ],
)
def test_queue_place(ahead: int, waiting: int, expected: tuple[int, int, int]) -> None:
    place = queue_place(ahead, waiting)
    assert (place.position, place.ahead, place.waiting) == expected


# -- rows, rates, medians ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("planned", "written", "left"),
    [(10_000, 2_000, 8_000), (10_000, 10_000, 0), (10_000, 10_250, 0), (None, 0, 0), (0, 0, 0), (500, -3, 500)],
)
def test_rows_left_is_never_negative(planned: int | None, written: int, left: int) -> None:
    assert rows_left(planned, written) == left


@pytest.mark.parametrize(
    ("rows", "seconds", "expected"),
    [
        (2_000, 10.0, 200.0),
        (0, 10.0, None),  # nothing measured: no rate, never 0 rows/s (a division by zero later)
        (-5, 10.0, None),
        (100, 0.0, 100 / MIN_WINDOW_SECONDS),  # no division by zero
        (100, -3.0, 100 / MIN_WINDOW_SECONDS),  # two hosts' clocks disagree
        (100, 0.05, 100 / MIN_WINDOW_SECONDS),
    ],
)
def test_rate(rows: int, seconds: float, expected: float | None) -> None:
    assert rate(rows, seconds) == expected


def test_the_history_figure_is_the_rows_weighted_median() -> None:
    # A tiny export (fixed costs: 100 rows/s) and an odd slow one barely count; the big ones decide.
    samples = [(1_000, 10.0), (1_000_000, 100.0), (2_000_000, 200.0), (500_000, 500.0)]
    assert weighted_median_rate(samples) == pytest.approx(10_000.0)
    # Three tiny exports and one big: the plain median would say 100 rows/s.
    assert weighted_median_rate([(1_000, 10.0)] * 3 + [(1_000_000, 100.0)]) == 10_000.0
    assert weighted_median_rate([(3_000, 2.0)]) == 1_500.0
    assert weighted_median_rate([(0, 5.0), (-1, 2.0)]) is None  # zero-row exports say nothing
    assert weighted_median_rate([]) is None
    # Two equal halves: the lower middle, as a median of an even count may be.
    assert weighted_median_rate([(100, 1.0), (100, 2.0)]) == 50.0


# -- the estimate --------------------------------------------------------------------------------


def test_this_run_throughput_from_the_first_batch_start_to_the_latest_batch_end() -> None:
    found = _estimate()
    assert found is not None
    assert found.basis == Basis.THIS_RUN
    assert found.rows_per_second == 200.0  # 2,000 rows over the 10 s from first start to latest end
    assert found.rows_left == 8_000
    # Projected from the latest batch end (10 s + 40 s), seen 5 s later: 35 s left.
    assert found.finish_at == _at(50)
    assert found.seconds_left == pytest.approx(35.0)


def test_between_batch_ends_the_finish_stays_put_and_the_time_left_counts_down() -> None:
    seen = [_estimate(now=_at(s)) for s in (10, 20, 30, 45)]
    assert {f.finish_at for f in seen if f} == {_at(50)}
    assert [f.seconds_left for f in seen if f] == pytest.approx([40.0, 30.0, 20.0, 5.0])


def test_an_overtaken_estimate_is_made_again_from_the_rate_up_to_now() -> None:
    # Due at 50 s; at 90 s no batch more has finished: 2,000 rows in 90 s, 8,000 to go.
    found = _estimate(now=_at(90))
    assert found is not None and found.basis == Basis.THIS_RUN
    assert found.rows_per_second == pytest.approx(2_000 / 90)
    assert found.seconds_left == pytest.approx(8_000 / (2_000 / 90))
    assert found.finish_at == _at(90) + timedelta(seconds=found.seconds_left)


def test_all_planned_rows_written_but_a_batch_still_running_is_any_moment_now() -> None:
    found = _estimate(rows_written=10_100, batches_done=9, now=_at(60))
    assert found is not None
    assert (found.rows_left, found.seconds_left, found.finish_at) == (0, 0.0, _at(60))


def test_before_a_batch_has_finished_the_definitions_history_is_the_basis() -> None:
    # Batches not started yet (waiting for a slot): projected from now, so it does not count down.
    waiting = _estimate(rows_written=0, batches_done=0, batches_started_at=None, last_batch_at=None,
                        history_rate=1_000.0, now=_at(3))  # fmt: skip
    assert waiting is not None
    assert (waiting.basis, waiting.rows_per_second, waiting.rows_left) == (Basis.HISTORY, 1_000.0, 10_000)
    assert waiting.seconds_left == pytest.approx(10.0) and waiting.finish_at == _at(13)
    # Started at T0: projected from the start, and counting down.
    started = _estimate(rows_written=0, batches_done=0, last_batch_at=None, history_rate=1_000.0, now=_at(4))
    assert started is not None and started.finish_at == _at(10) and started.seconds_left == pytest.approx(6.0)
    # Later than history said: any moment now, never a finish in the past.
    late = _estimate(rows_written=0, batches_done=0, last_batch_at=None, history_rate=1_000.0, now=_at(30))
    assert late is not None and (late.seconds_left, late.finish_at) == (0.0, _at(30))


def test_finished_batches_without_rows_leave_the_history_as_the_basis() -> None:
    found = _estimate(rows_written=0, batches_done=1, history_rate=500.0)
    assert found is not None and found.basis == Basis.HISTORY
    assert _estimate(rows_written=0, batches_done=1, history_rate=None) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "REQUESTED"},
        {"state": "MERGING"},
        {"state": "SUCCEEDED"},
        {"rows_planned": None, "batches_total": None},  # planning
        {"rows_planned": 0, "batches_total": 0, "batches_done": 0, "rows_written": 0},  # nothing to export
        {"batches_done": 0, "rows_written": 0, "last_batch_at": None},  # no batch done, no history
        {"batches_done": 0, "rows_written": 0, "last_batch_at": None, "history_rate": 0.0},
    ],
)
def test_no_estimate(changes: dict[str, Any]) -> None:
    assert _estimate(**changes) is None


def test_no_division_by_zero_when_the_first_batch_ends_as_it_starts() -> None:
    found = _estimate(last_batch_at=T0, now=T0)
    assert found is not None
    assert found.rows_per_second == 2_000 / MIN_WINDOW_SECONDS
    assert found.seconds_left == pytest.approx(8_000 / (2_000 / MIN_WINDOW_SECONDS))


def test_a_crawling_run_is_clamped_to_a_year() -> None:
    found = _estimate(rows_planned=10**15, rows_written=1, last_batch_at=_at(10), now=_at(10))
    assert found is not None and found.seconds_left == MAX_SECONDS_LEFT
    assert found.finish_at == _at(10) + timedelta(seconds=MAX_SECONDS_LEFT)
    history = _estimate(rows_planned=10**18, rows_written=0, batches_done=0, history_rate=1e-9)
    assert history is not None and history.seconds_left == MAX_SECONDS_LEFT


def test_a_batch_end_on_a_clock_ahead_of_the_api_server() -> None:
    # The worker's clock says the batch ended 2 s after the api-server's now: still a sane answer.
    found = _estimate(last_batch_at=_at(17), now=_at(15))
    assert found is not None and found.seconds_left == pytest.approx(2 + 8_000 / (2_000 / 17))
