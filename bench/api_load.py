"""Concurrent load on the ``/exports`` API: many requests at once, each timed.

Used by ``make bench`` (which prints the POST and status latencies) and by the end-to-end load
test (which checks every answer and every file). Plain threads and one ``httpx.Client`` per
thread, as separate clients would be.
"""

from __future__ import annotations

import math
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
    seconds = [t.seconds for t in timed]
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p99_ms": round(percentile(seconds, 99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }
