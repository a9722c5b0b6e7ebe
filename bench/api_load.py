"""Concurrent load on the ``/exports`` API: many requests at once, each timed.

Used by ``make bench`` (which prints the POST and status latencies) and by the end-to-end load
test (which checks every answer and every file). Plain threads and one client per thread, as
separate clients would be: an ``httpx.Client`` for requests at once, a :class:`LightClient` (one
kept-alive connection, a fraction of httpx's CPU per request) for pollers.

Two load shapes: :func:`run_concurrently` (every thread's first call released at once: a burst)
and :func:`poll_each` (one poller per transaction, one status request a second, the first at a
random moment of the first second: clients following an export until it ends).

:class:`Fleet` runs either from several processes at once, as the benchmark does: fifty clients
are fifty programs. Fifty threads of one Python process are not — they share one interpreter
lock, and measured here one process sent a burst of 50 requests over 184 ms (each httpx request
takes the sending thread about a millisecond of CPU under that lock), where ten processes of five
threads sent it within 23 ms. The time a request waited inside the measuring client was counted
as the server's.
"""

from __future__ import annotations

import functools
import http.client
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
    items: Sequence[T], threads: int, release: Callable[[], Any] | None = None,
) -> list[Timed]:  # fmt: skip
    """``call(client, item)`` for every item from ``threads`` threads, all released at once (once
    ``release()`` has returned, when given: another process's threads being ready too); answers
    in the order of ``items``."""
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    start = threading.Barrier(min(threads, len(items)), action=release)

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
    make_client: Callable[[], httpx.Client | LightClient], url: Callable[[str], str], tx_ids: Sequence[str], *,
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
        client = make_client()  # made (and connected) already, or new
        try:
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
        finally:
            client.close()

    with ThreadPoolExecutor(len(tx_ids)) as pool:
        list(pool.map(follow, tx_ids))
    return sorted(polls, key=lambda poll: poll.at)


@dataclass(frozen=True)
class Answered:
    """A request's answer as it crosses back from a client process."""

    status_code: int
    text: str
    seconds: float

    def json(self) -> Any:
        import json

        return json.loads(self.text)


#: In each client process: released together (a barrier across the processes), and told to stop.
_fleet: dict[str, Any] = {}


def _join_fleet(barrier: Any, stop: Any, ids: Any = None) -> None:
    _fleet.update(barrier=barrier, stop=stop, ids=ids)


def _client(base_url: str, headers: Mapping[str, str]) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=dict(headers), timeout=120)


@dataclass(frozen=True)
class LightAnswer:
    status_code: int
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class LightClient:
    """A poller's client: GETs on one kept-alive HTTP/1.1 connection (``http.client``). The
    pollers run on the cores the api-server uses; httpx spends several times the CPU per request
    that this does, and a poller waiting for a core to read its answer adds that wait to the
    latency it records."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float = 120.0) -> None:
        from urllib.parse import urlsplit

        where = urlsplit(base_url)
        self.host, self.port = where.hostname or "127.0.0.1", where.port or 80
        self.headers, self.timeout = dict(headers), timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> LightAnswer:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("GET", path, headers=self.headers)
                answer = self._conn.getresponse()
                return LightAnswer(answer.status, answer.read())
            except (http.client.RemoteDisconnected, ConnectionError):  # a kept-alive connection closed
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _post_part(base_url: str, headers: Mapping[str, str], path: str, bodies: Sequence[Any]) -> list[Answered]:
    timed = run_concurrently(functools.partial(_client, base_url, headers), lambda c, body: c.post(path, json=body),
                             bodies, len(bodies), release=_fleet["barrier"].wait)  # fmt: skip
    return [Answered(t.answer.status_code, t.answer.text, t.seconds) for t in timed]


def _poll_part(
    base_url: str, headers: Mapping[str, str], path: str, tx_ids: Sequence[str], terminal_states: frozenset[str],
    period: float, at_least: float, timeout: float, stop: bool, pollers: int = 0,
) -> list[Poll]:  # fmt: skip
    # Each poller's client is made and connected first (one GET /exports/v1/me): a poller is a
    # client that follows its export, its connection open; its set-up is not a status read.
    clients = [LightClient(base_url, headers) for _ in range(pollers or len(tx_ids))]
    for client in clients:
        if client.get(WARM_PATH).status_code != 200:
            raise RuntimeError(f"GET {WARM_PATH} failed")
    _fleet["barrier"].wait()
    if not tx_ids:  # the parent starts the transaction once every client is ready, then names it
        tx_ids = [_fleet["ids"].get()] * len(clients)
    return poll_each(clients.pop, path.format, tx_ids,
                     terminal=lambda state: not terminal_states or state in terminal_states, period=period,
                     at_least=at_least, timeout=timeout, stop=_fleet["stop"] if stop else None)  # fmt: skip


#: What each poller's client requests once, to be connected before it polls.
WARM_PATH = "/exports/v1/me"


class Fleet:
    """Clients in ``processes`` processes of their own (spawned), each running its share of the
    clients as threads: :meth:`post_at_once` and :meth:`poll`."""

    def __init__(self, base_url: str, headers: Mapping[str, str], processes: int) -> None:
        self.base_url, self.headers, self.processes = base_url, dict(headers), processes

    def _shares(self, items: Sequence[T]) -> list[list[T]]:
        return [share for share in (list(items[i :: self.processes]) for i in range(self.processes)) if share]

    def post_at_once(self, path: str, bodies: Sequence[Any]) -> list[Answered]:
        """Every body POSTed to ``path`` at once, each by a client of its own; answers in order."""
        shares = self._shares(list(enumerate(bodies)))
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(shares))
        with context.Pool(len(shares), initializer=_join_fleet, initargs=(barrier, None)) as pool:
            parts = [pool.apply_async(_post_part, (self.base_url, self.headers, path, [b for _, b in share]))
                     for share in shares]  # fmt: skip
            answers = [part.get() for part in parts]
        ordered: dict[int, Answered] = {}
        for share, part in zip(shares, answers, strict=True):
            ordered.update({i: a for (i, _), a in zip(share, part, strict=True)})
        return [ordered[i] for i in range(len(bodies))]

    def poll(
        self, path: str, tx_ids: Sequence[str], *, terminal_states: frozenset[str], period: float, at_least: float,
        timeout: float, beside: tuple[str, Sequence[str]] | None = None,
    ) -> tuple[list[Poll], list[Poll]]:  # fmt: skip
        """:func:`poll_each` of ``path`` (``{}`` is the transaction) for ``tx_ids``, the pollers
        shared among the processes; with ``beside`` = (path, names), one more process polls that
        path as those names until the others are done. Returns (polls, polls beside), each by time."""
        shares = self._shares(tx_ids)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(shares) + (1 if beside else 0))
        stop = context.Event()
        with context.Pool(barrier.parties, initializer=_join_fleet, initargs=(barrier, stop)) as pool:
            extra = None
            if beside is not None:
                extra = pool.apply_async(_poll_part, (self.base_url, self.headers, beside[0], beside[1], frozenset(),
                                                      period, timeout, timeout, True))  # fmt: skip
            parts = [pool.apply_async(_poll_part, (self.base_url, self.headers, path, share, terminal_states, period,
                                                   at_least, timeout, False)) for share in shares]  # fmt: skip
            try:
                polls = [poll for part in parts for poll in part.get()]
            finally:
                stop.set()
            others = extra.get() if extra is not None else []
        return sorted(polls, key=lambda p: p.at), sorted(others, key=lambda p: p.at)

    def follow_new(
        self, path: str, start: Callable[[], str], pollers: int, *, terminal_states: frozenset[str], period: float,
        timeout: float,
    ) -> tuple[str, list[Poll]]:  # fmt: skip
        """``pollers`` clients follow one new transaction from its start: once every client process
        is ready, ``start()`` requests it (here) and each client polls ``path`` (``{}`` is its id)
        until it is terminal. Returns its id and every poll, by time."""
        shares = self._shares(range(pollers))
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(shares) + 1)
        ids = context.Queue()
        with context.Pool(len(shares), initializer=_join_fleet, initargs=(barrier, None, ids)) as pool:
            parts = [pool.apply_async(_poll_part, (self.base_url, self.headers, path, [], terminal_states, period,
                                                   0.0, timeout, False, len(share))) for share in shares]  # fmt: skip
            barrier.wait(120)
            tx_id = start()
            for _ in shares:
                ids.put(tx_id)
            polls = [poll for part in parts for poll in part.get()]
        return tx_id, sorted(polls, key=lambda p: p.at)


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
