"""Concurrent load on the ``/exports`` API: many requests at once, each timed.

Used by ``make bench`` (which prints the POST and status latencies) and by the end-to-end load
test (which checks every answer and every file). Plain threads and one ``httpx.Client`` per
thread, as separate clients would be.

Two load shapes: :func:`run_concurrently` (every thread's first call released at once: a burst)
and :func:`poll_each` (one poller per transaction, one status request a second, the first at a
random moment of the first second: clients following an export until it ends).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Timed:
    answer: httpx.Response
    seconds: float


def run_concurrently(
    make_client: Callable[[], httpx.Client], call: Callable[[httpx.Client, T], httpx.Response],
    items: Sequence[T], threads: int,
) -> list[Timed]:  # fmt: skip
    """``call(client, item)`` for every item from ``threads`` threads, all released at once;
    answers in the order of ``items``."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    start = threading.Barrier(min(threads, len(items)))

    def one(item: T) -> Timed:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = make_client()
            with lock:
                clients.append(client)
            try:
                start.wait(60)  # every thread starts its first call together
            except threading.BrokenBarrierError:
                pass
        began = time.perf_counter()
        answer = call(client, item)
        return Timed(answer, time.perf_counter() - began)

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, items))
    finally:
        for client in clients:
            client.close()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(timed: Sequence[Timed]) -> dict[str, Any]:
    return seconds_summary([t.seconds for t in timed])


@dataclass(frozen=True)
class Poll:
    """One status request of a poller: its transaction, when (s since the pollers started), how long."""

    tx_id: str
    at: float
    seconds: float
    status_code: int
    state: str | None
    answered_id: str | None


def poll_each(
    make_client: Callable[[], httpx.Client], url: Callable[[str], str], tx_ids: Sequence[str], *,
    terminal: Callable[[str], bool], period: float = 1.0, at_least: float = 20.0, timeout: float = 3600.0,
    stop: threading.Event | None = None,
) -> list[Poll]:  # fmt: skip
    """One thread (and client) per transaction, each polling its own ``url(tx_id)`` every
    ``period`` s, its first poll at a random moment of the first period, until the transaction is
    ``terminal`` (by the answer's ``state``) and at least ``at_least`` s have passed (or
    ``timeout``, or ``stop`` is set). A poll that comes late (the previous answer took long) is
    sent at once, the next keeps the schedule. Every poll, in the order they were sent."""
    started = time.perf_counter()
    polls: list[Poll] = []
    lock = threading.Lock()

    def follow(tx_id: str) -> None:
        due = random.uniform(0, period)
        with make_client() as client:
            while True:
                delay = started + due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                answer = client.get(url(tx_id))
                took = time.perf_counter() - sent
                body = answer.json() if answer.status_code == 200 else {}
                state = body.get("state")
                with lock:
                    polls.append(Poll(tx_id, round(sent - started, 3), took, answer.status_code, state, body.get("id")))
                elapsed = time.perf_counter() - started
                done = answer.status_code == 200 and terminal(str(state))
                if (done and elapsed >= at_least) or elapsed >= timeout or (stop is not None and stop.is_set()):
                    return
                # Late (a slow answer)? The next poll goes at once, never a burst of catch-up polls.
                due = max(due + period, time.perf_counter() - started)

    with ThreadPoolExecutor(len(tx_ids)) as pool:
        list(pool.map(follow, tx_ids))
    return sorted(polls, key=lambda poll: poll.at)


def one_after_another(client: httpx.Client, path: str, times: int) -> list[float]:
    """``times`` GETs of ``path``, each sent when the previous one is answered: the latency of one
    client alone (seconds each; every answer must be 200)."""
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        answer = client.get(path)
        seconds.append(time.perf_counter() - began)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path} answered {answer.status_code}")
    return seconds


def seconds_summary(seconds: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p99_ms": round(percentile(seconds, 99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }
