"""Where a transaction stands: its place in the line while it waits to start, and when its batches
should be done while it runs. Arithmetic only: the header store counts and measures
(:meth:`HeaderStore.queue_places`, :meth:`HeaderStore.throughput_samples`), the API shows.

**The line.** A transaction is ``REQUESTED`` from its request until its run's first task starts
(``begin_transaction`` moves it to ``RUNNING``). Meanwhile its Airflow run waits for a place among the
DAG's ``max_active_runs`` and then its first task for an executor slot (``parallelism``, the pool's
slots). Its *position* is 1 + the ``REQUESTED`` transactions of anyone created before it (ties —
requests recorded in the same instant, one burst — by token): the order of requests. Airflow starts
queued runs in that order (by ``run_after``); tasks that wait for a slot go by priority weight, and
runs without a logical date are not ordered among themselves, so when executor slots are the limit
the position is the line's order, not a promise. Only counts are shown: never whose the others are.
A ``RUNNING`` transaction whose batches wait for slots has left the line: its estimate covers
that wait (this run's throughput includes it; before a batch has started, history is projected from
now).

**The estimate** (``RUNNING`` only) is when the last batch should be done; the merge follows
(``MERGING``, usually seconds, not included). ``rows_left`` = the plan's row count − the rows
written, never below 0 (the plan counted the rows before the batches read them).

* ``this_run``, once a batch has finished: throughput = rows written ÷ (latest batch end − first
  batch start). That is the run's throughput with whatever parallelism it got (the slots it had,
  shared with other runs), and the estimate assumes the rest goes the same: same cost per row,
  same parallelism. Rows of batches still in flight count only once they finish, so right after
  the first of several parallel batches ends the rate is low and the estimate late; it catches up
  as the others land. The finish is projected from the latest batch end, so it stays put between
  batch ends and ``seconds_left`` counts down. If it passes with rows still to go (the run slowed
  down), the rate up to now (rows written ÷ (now − first batch start)) projects it from now.
* ``history``, before the first batch finishes: the same batch-phase throughput of the
  definition's last :data:`HISTORY_RUNS` succeeded exports, their rows-weighted median (a large
  export counts for more than a tiny one whose time is mostly fixed costs; one odd run cannot swing
  it), cached per process for :data:`HISTORY_TTL_SECONDS`. Projected from the first batch's start,
  or from now while no batch has started; once passed, "any moment now" (``seconds_left`` 0).
* ``null``: not ``RUNNING``; not planned yet (no row count); nothing to export; or no batch finished
  and no succeeded export of the definition to learn from (the first batch's end gives one).

No division by zero: a measuring window under :data:`MIN_WINDOW_SECONDS` counts as that (clocks of
two hosts can disagree), no rows measured means no rate; ``seconds_left`` is clamped to 0 ..
:data:`MAX_SECONDS_LEFT`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from export_tx.states import State

if TYPE_CHECKING:
    from export_tx.store import Header

#: A measuring window shorter than this counts as this long.
MIN_WINDOW_SECONDS = 0.1
#: No estimate says more than a year.
MAX_SECONDS_LEFT = 365 * 24 * 3600.0
#: The history figure: the definition's latest succeeded exports considered.
HISTORY_RUNS = 20
#: How long a process keeps a definition's history figure.
HISTORY_TTL_SECONDS = 60.0


class Basis(StrEnum):
    THIS_RUN = "this_run"
    HISTORY = "history"


# -- the line -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePlace:
    """``ahead``: transactions waiting that were requested before; ``waiting``: all, this one included."""

    ahead: int
    waiting: int

    @property
    def position(self) -> int:
        return self.ahead + 1


def queue_place(ahead: int, waiting: int) -> QueuePlace:
    """A place as counted. The transaction may have started between reading its header and
    counting: the count of those waiting never shows fewer than its position."""
    ahead = max(0, int(ahead))
    return QueuePlace(ahead, max(int(waiting), ahead + 1))


# -- the estimate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    finish_at: datetime
    seconds_left: float
    basis: Basis
    rows_per_second: float
    rows_left: int


def rows_left(rows_planned: int | None, rows_written: int) -> int:
    """Rows still to go: the plan's count less those written, never below 0."""
    return max(0, (rows_planned or 0) - max(0, rows_written))


def seconds_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def rate(rows: int, seconds: float) -> float | None:
    """Rows per second; None without rows. A window under :data:`MIN_WINDOW_SECONDS` (or a
    negative one, from two hosts' clocks) counts as that."""
    if rows <= 0:
        return None
    return rows / max(seconds, MIN_WINDOW_SECONDS)


def weighted_median_rate(samples: Iterable[tuple[int, float]]) -> float | None:
    """The rows-weighted median of ``rows / seconds`` over ``(rows, seconds)`` samples; None
    without a usable one (no rows)."""
    rated = sorted((r, rows) for rows, seconds in samples if (r := rate(rows, seconds)) is not None)
    if not rated:
        return None
    half = sum(rows for _, rows in rated) / 2
    seen = 0
    for r, rows in rated:
        seen += rows
        if seen >= half:
            return r
    return rated[-1][0]  # pragma: no cover - the loop always returns


def _clamped(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_SECONDS_LEFT)


def _projected(anchor: datetime, rows: int, per_second: float, now: datetime) -> datetime:
    # Far beyond a year is a year: never a timedelta overflow.
    ahead = min(rows / per_second, MAX_SECONDS_LEFT + max(0.0, seconds_between(anchor, now)))
    return anchor + timedelta(seconds=ahead)


def _result(finish: datetime, now: datetime, basis: Basis, per_second: float, left: int) -> Estimate:
    seconds = _clamped(seconds_between(now, finish))
    return Estimate(now + timedelta(seconds=seconds), seconds, basis, per_second, left)


def estimate(
    *,
    state: State | str,
    rows_planned: int | None,
    rows_written: int,
    batches_total: int | None,
    batches_done: int,
    batches_started_at: datetime | None,
    last_batch_at: datetime | None,
    now: datetime,
    history_rate: float | None,
) -> Estimate | None:
    """When the batches should be done (see the module's docstring for what it assumes)."""
    if State(state) != State.RUNNING or rows_planned is None or not batches_total:
        return None
    left = rows_left(rows_planned, rows_written)
    if batches_done > 0 and batches_started_at is not None and last_batch_at is not None:
        measured = rate(rows_written, seconds_between(batches_started_at, last_batch_at))
        if measured is not None:
            finish = _projected(last_batch_at, left, measured, now)
            if finish < now and left > 0:
                # Overtaken with rows still to go: the run slowed down; the rate up to now, from now.
                measured = rate(rows_written, seconds_between(batches_started_at, now)) or measured
                finish = _projected(now, left, measured, now)
            return _result(finish, now, Basis.THIS_RUN, measured, left)
    if history_rate is not None and history_rate > 0:
        anchor = batches_started_at if batches_started_at is not None else now
        return _result(_projected(anchor, left, history_rate, now), now, Basis.HISTORY, history_rate, left)
    return None


def needs_history(header: Header) -> bool:
    """Whether the header's estimate would use the definition's history: running and planned, but
    nothing measured in this run yet (no batch with rows finished, or a run from before the batch
    phase was recorded)."""
    measured = (
        header.batches_done > 0
        and header.rows_written > 0
        and header.batches_started_at is not None
        and header.last_batch_at is not None
    )
    return (
        header.state == State.RUNNING
        and header.rows_planned is not None
        and bool(header.batches_total)
        and (not measured)
    )


def estimate_for(header: Header, now: datetime, history_rate: float | None) -> Estimate | None:
    return estimate(
        state=header.state,
        rows_planned=header.rows_planned,
        rows_written=header.rows_written,
        batches_total=header.batches_total,
        batches_done=header.batches_done,
        batches_started_at=header.batches_started_at,
        last_batch_at=header.last_batch_at,
        now=now,
        history_rate=history_rate,
    )


class HistoryRates:
    """Each definition's history figure, kept per process for ``ttl`` seconds: a status poll reads
    it from here, and one poll a minute per definition asks the store (one indexed query).
    Two threads finding it stale at once both ask; either answer is good."""

    def __init__(self, ttl: float = HISTORY_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._kept: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._lock = threading.Lock()

    def rate(self, store: Any, definition: str) -> float | None:
        """The rows-weighted median throughput of ``definition``'s latest succeeded exports in
        ``store`` (a :class:`HeaderStore`), or None when it has none."""
        key = (str(store.url), definition)
        now = self.clock()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self.ttl:
            return kept[1]
        figure = weighted_median_rate(store.throughput_samples(definition, HISTORY_RUNS))
        with self._lock:
            self._kept[key] = (now, figure)
        return figure

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


#: This process's history figures.
history = HistoryRates()
