"""Point-in-time exports: the whole transaction reads one snapshot of its PostgreSQL source.

A definition with ``consistent_snapshot`` is planned and read, batch after batch, as the source was
at one moment, however its rows change while the export runs: the file never mixes two moments.
PostgreSQL lends a snapshot to other sessions only while the transaction that exported it stays
open (:mod:`export_tx.sources.snapshot`), so something must keep one open from before planning until
the last batch has read — batches retry, the merge reads no source. A process made for waiting does:

* ``begin_transaction`` marks the snapshot ``pending`` (:func:`to_hold`) and hands the source's
  connection id to the mapped ``hold_snapshot`` task (an ordinary export hands nothing: no task
  process starts), which defers to ``HoldSnapshotTrigger``; in Airflow's triggerer :func:`hold`
  exports the snapshot, records its id and moment in the header store (never XCom) and keeps the
  transaction open, checking its session and the header every few seconds, until the export merges
  or ends, or the longest hold passes. Under ``dag.test()``, which runs a trigger inline and waits for
  it, the same :func:`hold` runs in a thread of the test's process instead (:func:`hold_in_process`).
* planning waits (bounded) for the snapshot, then every query it runs imports it; each batch imports
  it too (:func:`reading`).
* the holder's session ending early (the triggerer restarted, the connection dropped, the longest hold
  passed) loses the snapshot: the steps still to read fail with a message that says so — never a
  silent read of another moment. A holder started again while the first still holds it (a re-run
  trigger) imports it and exports it again: the same moment, under a new id (:func:`hold`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from export_tx import config
from export_tx.errors import (
    DefinitionInvalid,
    FieldError,
    SnapshotMoved,
    SnapshotUnavailable,
    TransactionClosed,
    is_transient,
    user_message,
)
from export_tx.states import TERMINAL, SnapshotState, State
from export_tx.store import Header, HeaderStore, utcnow

if TYPE_CHECKING:
    from export_tx.definition import ExportDefinition
    from export_tx.sources.snapshot import Holder, Taken

log = logging.getLogger(__name__)

#: How often a step waiting for the snapshot looks at the header.
WAIT_POLL_SECONDS = 0.25
#: Between attempts to connect and take the snapshot (while PostgreSQL does not answer).
TAKE_RETRY_SECONDS = 2.0
#: What the event log quotes of ``pg_current_snapshot()`` (its list of transactions in progress may be long).
PG_SNAPSHOT_SHOWN = 200


def wanted(definition: ExportDefinition) -> bool:
    return bool(getattr(definition, "consistent_snapshot", False))


def moment(at: datetime | None) -> str:
    """A snapshot's moment as messages show it (UTC, milliseconds)."""
    if at is None:
        return "an unknown moment"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def check_source(definition: ExportDefinition) -> str:
    """The Airflow connection id of a point-in-time export's PostgreSQL source; anything else is
    refused, naming the field (an Airflow connection's type is known only now, when the export runs)."""
    from export_tx.definition import snapshot_refusal
    from export_tx.sources import DbApiSource, PostgresSource

    source = definition.source
    problem = snapshot_refusal(source)
    if problem is None and isinstance(source, DbApiSource) and source.dialect != "postgresql":
        problem = f"a point-in-time export reads one PostgreSQL snapshot; {source.label()} is {source.dialect}"
    if problem is not None or not isinstance(source, PostgresSource | DbApiSource):
        raise DefinitionInvalid(definition.name, [FieldError("consistent_snapshot", problem or "PostgreSQL only")])
    return source.conn_id


# -- begin_transaction: what to hold --------------------------------------------------------------


def to_hold(store: HeaderStore, header: Header, *, in_process: bool = False) -> list[str]:
    """For ``begin_transaction``: the source's connection id when the export asks for a snapshot (the
    mapped ``hold_snapshot`` task gets one instance), else nothing (no instance, no process). Marks
    the snapshot ``pending`` so the status shows a point-in-time export at once. ``in_process``
    (``dag.test()``: no triggerer) starts the holder in a thread of this process instead."""
    from export_tx.catalog import registry

    definition = registry.get(header.definition)
    if not wanted(definition):
        return []
    conn_id = definition.source.conn_id if hasattr(definition.source, "conn_id") else ""
    store.snapshot_change(
        header.id,
        expect_id=None,
        expect_states={None},
        message="point-in-time export: a snapshot of the source is being taken; planning waits for it",
        snapshot_state=SnapshotState.PENDING,
    )
    if in_process:
        hold_in_process(header.id, str(conn_id))
        return []
    return [str(conn_id)]


# -- planning and batches: reading the snapshot -----------------------------------------------------


@contextmanager
def reading(
    store: HeaderStore, tx_id: str, definition: ExportDefinition, *, wait_seconds: float = 0.0
) -> Iterator[Header | None]:
    """Every source read inside reads the transaction's snapshot, when its definition asks for one
    (else nothing changes, and None is yielded). Waits up to ``wait_seconds`` for it to be taken
    (planning); yields the header that names it. Raises :class:`SnapshotUnavailable` — final: another
    snapshot would be another moment — when it was never taken, or was lost or released."""
    if not wanted(definition):
        yield None
        return
    from export_tx.sources.snapshot import importing

    check_source(definition)
    header = held(store, tx_id, wait_seconds)
    snapshot_id = str(header.snapshot_id)

    def gone(exc: BaseException) -> BaseException:
        return _gone(store, tx_id, snapshot_id, header.snapshot_at)

    with importing(snapshot_id, gone):
        yield header


def held(store: HeaderStore, tx_id: str, wait_seconds: float = 0.0) -> Header:
    """The header once its snapshot is held, waiting up to ``wait_seconds`` for it to be taken."""
    deadline = time.monotonic() + wait_seconds
    while True:
        header = store.get(tx_id)
        if header.terminal:
            raise TransactionClosed(f"the transaction is {header.state.value}; no further work is done")
        state = header.snapshot_state
        if state == SnapshotState.HELD and header.snapshot_id:
            return header
        if state in (SnapshotState.LOST, SnapshotState.RELEASED, SnapshotState.UNAVAILABLE):
            raise SnapshotUnavailable(_why(store, header))
        if time.monotonic() >= deadline:
            last = store.last_event(tx_id, "snapshot")
            tried = f" (last: {last.message})" if last is not None and state is not None else ""
            raise SnapshotUnavailable(
                f"no snapshot of the source was taken within {wait_seconds:.0f} s{tried}. The hold_snapshot "
                "task takes and holds it from Airflow's triggerer: check that a triggerer runs and the "
                "hold_snapshot task's log, then request the export again"
            )
        time.sleep(WAIT_POLL_SECONDS)


def _why(store: HeaderStore, header: Header) -> str:
    last = store.last_event(header.id, "snapshot")
    said = last.message if last is not None else f"its state is {header.snapshot_state}"
    if header.snapshot_state == SnapshotState.UNAVAILABLE:
        return f"no snapshot of the source could be taken: {said}"
    return (
        f"the snapshot of the source (as of {moment(header.snapshot_at)}) is no longer held ({said}); "
        "a point-in-time export never reads another moment, so it stops here: request the export again"
    )


def _gone(store: HeaderStore, tx_id: str, snapshot_id: str, at: datetime | None) -> BaseException:
    """What a step raises when PostgreSQL no longer knows the snapshot it was told to read."""
    header = store.get(tx_id)
    if header.snapshot_state == SnapshotState.HELD and header.snapshot_id not in (None, snapshot_id):
        # A restarted holder took it over under a new id (the same moment): the next attempt reads it.
        return SnapshotMoved(f"the snapshot's holder changed while this step began; it reads {header.snapshot_id}")
    reason = (
        "the session holding it ended before this step read (Airflow's triggerer restarted, or PostgreSQL "
        "closed the session)"
    )
    store.snapshot_change(
        tx_id,
        expect_id=snapshot_id,
        expect_states={SnapshotState.HELD},
        active_only=False,
        message=f"snapshot lost: {reason}",
        snapshot_state=SnapshotState.LOST,
    )
    return SnapshotUnavailable(
        f"the snapshot of the source (as of {moment(at)}) is gone: {reason}. A point-in-time export never "
        "reads another moment, so it stops here: request the export again"
    )


# -- the holder ---------------------------------------------------------------------------------------


def _ended(header: Header | None) -> bool:
    """The export reads its source no more: merging (every batch has read) or ended."""
    return header is None or header.state == State.MERGING or header.state in TERMINAL


async def hold(
    tx_id: str,
    uri: Callable[[], Awaitable[str]],
    *,
    poll_seconds: float,
    take_until: datetime,
    hold_until: datetime,
    holder: str = "Airflow's triggerer",
    store: HeaderStore | None = None,
) -> dict[str, Any]:
    """Take (or take over) the transaction's snapshot and hold it until the export no longer reads its
    source; the outcome, for the hold task's log. Safe to run again, and beside itself: the header's
    snapshot columns change only by compare-and-set, so a second run never records another moment —
    it imports the recorded snapshot and holds it under a new id, or records it lost."""
    if store is None:
        store = await asyncio.to_thread(HeaderStore.from_settings)
    taken: Taken | None = None
    session: Holder | None = None
    while session is None:
        header = await asyncio.to_thread(store.find, tx_id)
        if _ended(header):
            return _outcome(tx_id, "not_needed", "the export reads its source no more")
        assert header is not None
        if header.snapshot_state in (SnapshotState.LOST, SnapshotState.RELEASED, SnapshotState.UNAVAILABLE):
            return _outcome(tx_id, str(header.snapshot_state), f"the snapshot is {header.snapshot_state}")
        try:
            session, taken = await _take(store, header, uri, holder)
        except _Again:
            continue
        except SnapshotUnavailable as exc:
            if header.snapshot_id is None:
                await _end(store, header, SnapshotState.UNAVAILABLE, str(exc))
                return _outcome(tx_id, "unavailable", str(exc))
            # Recorded as held, but its session is gone (its holder died, e.g. the triggerer was killed).
            message = f"snapshot lost: its holder stopped and {exc}"
            await _end(store, header, SnapshotState.LOST, message)
            return _outcome(tx_id, "lost", message)
        except Exception as exc:
            problem = user_message("taking the snapshot", exc, retries=False)
            if is_transient(exc) and utcnow() < take_until:
                log.warning("%s; trying again", problem)
                await asyncio.sleep(TAKE_RETRY_SECONDS)
                continue
            await _end(store, header, SnapshotState.UNAVAILABLE if header.snapshot_id is None else SnapshotState.LOST,
                       problem)  # fmt: skip
            return _outcome(tx_id, "unavailable" if header.snapshot_id is None else "lost", problem)
    assert taken is not None
    log.info("holding snapshot %s of %s (as of %s) in backend %s", taken.snapshot_id, tx_id, moment(taken.at),
             session.backend_pid)  # fmt: skip
    try:
        return await _keep(store, tx_id, session, taken, poll_seconds, hold_until)
    except asyncio.CancelledError:
        # The triggerer stops, or the hold task was cleared: the snapshot ends with this session.
        await session.close()
        await _lost_on_stop(store, tx_id, taken, f"its holder ({holder}) was stopped")
        raise
    finally:
        await session.close()


async def _take(
    store: HeaderStore, header: Header, uri: Callable[[], Awaitable[str]], holder: str
) -> tuple[Holder, Taken]:
    """A new snapshot if none is recorded; else the recorded one, taken over (the same moment)."""
    from export_tx.sources.snapshot import Holder

    session = await Holder.connect(await uri(), f"export-tx snapshot {header.id}")
    try:
        if header.snapshot_id is None:
            taken = await session.take()
            recorded = await asyncio.to_thread(
                store.snapshot_change,
                header.id,
                expect_id=None,
                expect_states={None, SnapshotState.PENDING},
                message=f"point-in-time: the source is read as of {moment(taken.at)} (its snapshot is held by "
                f"{holder})",
                data={
                    "snapshot_id": taken.snapshot_id,
                    "snapshot_at": taken.at.isoformat(),
                    "pg_snapshot": taken.pg_snapshot[:PG_SNAPSHOT_SHOWN],
                    "holder": holder,
                },  # fmt: skip
                snapshot_state=SnapshotState.HELD,
                snapshot_id=taken.snapshot_id,
                snapshot_at=taken.at,
            )
        else:
            taken = await session.adopt(header.snapshot_id, header.snapshot_at or utcnow())
            recorded = await asyncio.to_thread(
                store.snapshot_change,
                header.id,
                expect_id=header.snapshot_id,
                expect_states={SnapshotState.HELD},
                message=f"point-in-time: the snapshot as of {moment(taken.at)} is held again, by a restarted "
                f"holder ({holder}); the same moment",
                data={"snapshot_id": taken.snapshot_id, "replaces": header.snapshot_id, "holder": holder},
                snapshot_id=taken.snapshot_id,
            )
        if not recorded:
            # Another holder recorded first, or the export moved on: look again.
            raise _Again()
    except BaseException:
        await session.close()
        raise
    return session, taken


class _Again(Exception):
    """The header changed under a holder taking the snapshot: start over from the header."""


async def _keep(
    store: HeaderStore, tx_id: str, session: Holder, taken: Taken, poll_seconds: float, hold_until: datetime
) -> dict[str, Any]:
    """Hold until the export merges or ends, another holder takes over, or the longest hold passes."""
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await session.check()  # the session lives (and a server's idle timer restarts)
        except Exception as exc:
            reason = f"its session to PostgreSQL ended ({user_message('holding it', exc, retries=False)})"
            header = await asyncio.to_thread(store.find, tx_id)
            await _end(store, header, SnapshotState.LOST, f"snapshot lost: {reason}", expect_id=taken.snapshot_id)
            return _outcome(tx_id, "lost", reason)
        header = await asyncio.to_thread(store.find, tx_id)
        if _ended(header):
            held_for = (utcnow() - taken.at).total_seconds()
            message = f"snapshot released: the export reads its source no more (held {held_for:.1f} s)"
            await _end(store, header, SnapshotState.RELEASED, message, expect_id=taken.snapshot_id)
            return _outcome(tx_id, "released", message)
        assert header is not None
        if header.snapshot_id != taken.snapshot_id:
            return _outcome(tx_id, "superseded", f"another holder holds the snapshot as {header.snapshot_id}")
        if utcnow() >= hold_until:
            limit = "EXPORT_TX_SNAPSHOT_MAX_HOLD_SECONDS"
            message = (f"snapshot lost: held for the longest allowed ({limit}); PostgreSQL keeps every row "
                       "version changed since for as long")  # fmt: skip
            await _end(store, header, SnapshotState.LOST, message, expect_id=taken.snapshot_id)
            return _outcome(tx_id, "lost", message)


async def _end(
    store: HeaderStore, header: Header | None, state: SnapshotState, message: str, *, expect_id: str | None = None
) -> None:
    if header is None:
        return
    expected = expect_id if expect_id is not None else header.snapshot_id
    before = {SnapshotState.HELD} if expected is not None else {None, SnapshotState.PENDING}
    await asyncio.to_thread(store.snapshot_change, header.id, expect_id=expected, expect_states=before,
                            active_only=False, message=message, snapshot_state=state)  # fmt: skip


async def _lost_on_stop(store: HeaderStore, tx_id: str, taken: Taken, reason: str) -> None:
    """Best effort, while being cancelled: say at once that the snapshot is gone (a holder started
    again finds it gone too and says so)."""
    try:
        header = await asyncio.wait_for(asyncio.to_thread(store.find, tx_id), 5)
        if _ended(header):
            await _end(store, header, SnapshotState.RELEASED, "snapshot released: the export reads its source no "
                       "more", expect_id=taken.snapshot_id)  # fmt: skip
        else:
            await asyncio.wait_for(_end(store, header, SnapshotState.LOST, f"snapshot lost: {reason}",
                                        expect_id=taken.snapshot_id), 5)  # fmt: skip
    except Exception:  # pragma: no cover - the loop may be closing under us
        log.warning("could not record that the snapshot of %s ended", tx_id, exc_info=True)


def _outcome(tx_id: str, outcome: str, message: str) -> dict[str, Any]:
    return {"tx_id": tx_id, "outcome": outcome, "message": message}


# -- where the holder runs ----------------------------------------------------------------------------


def hold_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """Until when a holder keeps trying to take the snapshot, and until when it may hold it."""
    now = now or utcnow()
    return now + timedelta(seconds=config.snapshot_wait_seconds()), now + timedelta(
        seconds=config.snapshot_max_hold_seconds()
    )


async def connection_uri(conn_id: str) -> str:
    """The libpq URI of a PostgreSQL Airflow connection, looked up asynchronously (in the triggerer)."""
    from airflow.sdk import BaseHook

    from export_tx.sources.postgres import connection_uri as uri_of

    conn = await BaseHook.aget_connection(conn_id)
    return uri_of(_postgres_only(conn_id, conn))


def _postgres_only(conn_id: str, conn: Any) -> Any:
    kind = str(getattr(conn, "conn_type", "") or "").lower()
    if kind not in ("postgres", "postgresql"):
        raise SnapshotUnavailable(
            f"consistent_snapshot: a point-in-time export reads one PostgreSQL snapshot; the Airflow connection "
            f"{conn_id!r} is {kind or 'of no type'}"
        )
    return conn


def hold_in_process(tx_id: str, conn_id: str) -> threading.Thread | None:
    """Under ``dag.test()``, which has no triggerer (it runs a deferred task's trigger inline and waits
    for it, and this one ends only with the export): :func:`hold` in a thread of this process. None
    when the connection is not PostgreSQL's (recorded: planning then fails, naming the field)."""
    from airflow.sdk import BaseHook

    from export_tx.sources.postgres import connection_uri as uri_of

    try:
        resolved = uri_of(_postgres_only(conn_id, BaseHook.get_connection(conn_id)))
    except Exception as exc:
        HeaderStore.from_settings().snapshot_change(
            tx_id, expect_id=None, expect_states={None, SnapshotState.PENDING}, active_only=False,
            message=user_message("taking the snapshot", exc, retries=False), snapshot_state=SnapshotState.UNAVAILABLE,
        )  # fmt: skip
        return None

    async def uri() -> str:
        return resolved

    take_until, hold_until = hold_window()
    coroutine = hold(tx_id, uri, poll_seconds=config.snapshot_poll_seconds(), take_until=take_until,
                     hold_until=hold_until, holder="this process: dag.test() runs no triggerer")  # fmt: skip
    thread = threading.Thread(target=asyncio.run, args=(coroutine,), name=f"snapshot-{tx_id}"[:60], daemon=True)
    thread.start()
    return thread
