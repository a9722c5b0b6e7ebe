"""The holder of a point-in-time export's snapshot (:func:`export_tx.snapshots.hold`, the trigger's
body) against the real PostgreSQL and both header stores: it takes the snapshot and records it, a
second run takes it over (the same moment), it lets go when the export merges, and a snapshot lost
— its session ended, its holder stopped — fails the steps still to read, saying so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from export_tx import snapshots
from export_tx.airflow.triggers import HoldSnapshotTrigger
from export_tx.definition import ExportDefinition
from export_tx.errors import DefinitionInvalid, SnapshotUnavailable
from export_tx.sources import DbApiSource, PostgresSource, fetch_all
from export_tx.sources.snapshot import Holder
from export_tx.states import SnapshotState, State
from export_tx.store import HeaderStore, utcnow

SQL = "SELECT id, v FROM hold_rows"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def definition(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> ExportDefinition:
    monkeypatch_module.setenv("AIRFLOW_CONN_HOLD_PG", pg_database)
    return ExportDefinition(name="hold_rows", description="", source=PostgresSource("hold_pg"), sql=SQL,
                            key_column="id", consistent_snapshot=True)  # fmt: skip


@pytest.fixture
def table(pg_database: str) -> str:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS hold_rows; CREATE TABLE hold_rows (id integer PRIMARY KEY, v text); "
            "INSERT INTO hold_rows SELECT g, 'row ' || g FROM generate_series(1, 500) g"
        )
    return pg_database


def _tx(store: HeaderStore) -> str:
    """A RUNNING transaction whose snapshot is pending (as begin_transaction leaves it)."""
    import uuid

    tx = f"hold-{uuid.uuid4().hex}"
    store.create(tx, definition="hold_rows", params={}, batch_size=1000, requested_by="ana")
    store.transition(tx, State.RUNNING, "test")
    assert store.snapshot_change(tx, expect_id=None, expect_states={None}, message="asked",
                                 snapshot_state=SnapshotState.PENDING)  # fmt: skip
    return tx


def _hold(tx: str, dsn: str, store: HeaderStore, *, take_seconds: float = 30, hold_seconds: float = 3600) -> Any:
    async def uri() -> str:
        return dsn

    now = utcnow()
    return snapshots.hold(tx, uri, poll_seconds=0.05, take_until=now + timedelta(seconds=take_seconds),
                          hold_until=now + timedelta(seconds=hold_seconds), holder="the test", store=store)  # fmt: skip


def _until(loop: asyncio.AbstractEventLoop, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Run the loop (the holders poll) until ``condition()``."""
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        loop.run_until_complete(asyncio.sleep(0.05))


def _read(definition: ExportDefinition) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in fetch_all(definition.source, SQL + " ORDER BY id", {}).to_pylist()]


def _change(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE hold_rows SET v = 'changed' WHERE id = 7; DELETE FROM hold_rows WHERE id = 8; "
                     "INSERT INTO hold_rows VALUES (501, 'new')")  # fmt: skip


def _snapshot_events(store: HeaderStore, tx: str) -> list[str]:
    return [e.message for e in store.events(tx, limit=1000) if e.kind == "snapshot"]


def test_taken_held_taken_over_and_released(
    store: HeaderStore, definition: ExportDefinition, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    before = _read(definition)
    tx = _tx(store)
    first = loop.create_task(_hold(tx, table, store))
    _until(loop, lambda: store.get(tx).snapshot_state == SnapshotState.HELD)
    held = store.get(tx)
    assert held.snapshot_id and held.snapshot_at is not None
    _change(table)
    with snapshots.reading(store, tx, definition, wait_seconds=5) as header:
        assert header is not None and header.snapshot_id == held.snapshot_id
        assert _read(definition) == before
    assert _read(definition) != before  # outside: the table did change

    # Run again beside the first (a re-run trigger): it takes the snapshot over — the same moment.
    second = loop.create_task(_hold(tx, table, store))
    _until(loop, first.done)
    assert first.result()["outcome"] == "superseded"
    again = store.get(tx)
    assert again.snapshot_state == SnapshotState.HELD and again.snapshot_id != held.snapshot_id
    assert again.snapshot_at == held.snapshot_at
    with snapshots.reading(store, tx, definition):
        assert _read(definition) == before

    # Every batch has read: the export merges, and the holder lets the snapshot go.
    store.transition(tx, State.MERGING, "test")
    _until(loop, second.done)
    assert second.result()["outcome"] == "released"
    assert store.get(tx).snapshot_state == SnapshotState.RELEASED
    said = _snapshot_events(store, tx)
    assert (
        said[1].startswith("point-in-time: the source is read as of ")
        and "(its snapshot is held by the test)" in said[1]
    )
    assert said[2].startswith("point-in-time: the snapshot as of ") and "held again, by a restarted holder" in said[2]
    assert said[3].startswith("snapshot released: the export reads its source no more")
    with pytest.raises(SnapshotUnavailable, match="no longer held"), snapshots.reading(store, tx, definition):
        pass


def test_a_lost_snapshot_fails_the_steps_still_to_read(
    store: HeaderStore, definition: ExportDefinition, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    tx = _tx(store)
    task = loop.create_task(_hold(tx, table, store))
    _until(loop, lambda: store.get(tx).snapshot_state == SnapshotState.HELD)
    with snapshots.reading(store, tx, definition):  # a batch begins with the snapshot held …
        with psycopg.connect(table, autocommit=True) as admin:  # … and PostgreSQL ends the holder's session
            holder = f"export-tx snapshot {tx}"
            query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            (ended,) = admin.execute(query, (holder,)).fetchone()  # type: ignore[misc]
        assert ended
        with pytest.raises(SnapshotUnavailable, match=r"is gone: the session holding it ended .* request the export"):
            _read(definition)
    assert store.get(tx).snapshot_state == SnapshotState.LOST
    _until(loop, task.done)
    assert task.result()["outcome"] == "lost"
    # A later step fails at once; a holder started again never takes another moment.
    with pytest.raises(SnapshotUnavailable, match="no longer held .* request the export again"):
        with snapshots.reading(store, tx, definition):
            pass
    lost = store.get(tx)
    assert loop.run_until_complete(_hold(tx, table, store))["outcome"] == "lost"
    assert store.get(tx).snapshot_id == lost.snapshot_id and store.get(tx).snapshot_state == SnapshotState.LOST


def test_a_holder_started_again_after_its_predecessor_died_records_the_loss(
    store: HeaderStore, definition: ExportDefinition, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    """The triggerer was killed: nobody said the snapshot ended. The trigger, run again, finds
    PostgreSQL no longer knows it and records it lost — it does not take a new one."""
    tx = _tx(store)
    dead = loop.run_until_complete(Holder.connect(table, "the predecessor"))
    taken = loop.run_until_complete(dead.take())
    assert store.snapshot_change(tx, expect_id=None, expect_states={SnapshotState.PENDING}, message="taken",
                                 snapshot_state=SnapshotState.HELD, snapshot_id=taken.snapshot_id,
                                 snapshot_at=taken.at)  # fmt: skip
    loop.run_until_complete(dead.close())
    outcome = loop.run_until_complete(_hold(tx, table, store))
    assert outcome["outcome"] == "lost" and "no longer knows the snapshot" in outcome["message"]
    header = store.get(tx)
    assert (header.snapshot_state, header.snapshot_id) == (SnapshotState.LOST, taken.snapshot_id)
    assert _snapshot_events(store, tx)[-1].startswith("snapshot lost: its holder stopped")


def test_a_stopped_holder_says_at_once_that_the_snapshot_is_gone(
    store: HeaderStore, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    tx = _tx(store)
    task = loop.create_task(_hold(tx, table, store))
    _until(loop, lambda: store.get(tx).snapshot_state == SnapshotState.HELD)
    task.cancel()  # the triggerer stops (SIGTERM) and cancels its triggers
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert store.get(tx).snapshot_state == SnapshotState.LOST
    assert _snapshot_events(store, tx)[-1] == "snapshot lost: its holder (the test) was stopped"


def test_no_snapshot_taken_fails_planning_saying_why(
    store: HeaderStore, definition: ExportDefinition, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx = _tx(store)
    with pytest.raises(SnapshotUnavailable, match=r"no snapshot of the source was taken within 0 s .*triggerer runs"):
        with snapshots.reading(store, tx, definition, wait_seconds=0.2):
            pass
    # PostgreSQL does not answer: the holder keeps trying for as long as planning waits, then says so.
    outcome = loop.run_until_complete(_hold(tx, "postgresql://postgres@127.0.0.1:1/nowhere", store, take_seconds=0.5))
    assert outcome["outcome"] == "unavailable" and "OperationalError" in outcome["message"]
    with pytest.raises(SnapshotUnavailable, match="no snapshot of the source could be taken: taking the snapshot"):
        with snapshots.reading(store, tx, definition, wait_seconds=5):
            pass
    # The connection is not PostgreSQL's: refused when the trigger looks it up, naming the field.
    monkeypatch.setenv("AIRFLOW_CONN_HOLD_MYSQL", "mysql://reader@127.0.0.1:1/shop")
    other = _tx(store)

    async def mysql() -> dict[str, Any]:
        now = utcnow()
        return await snapshots.hold(other, lambda: snapshots.connection_uri("hold_mysql"), poll_seconds=0.05,
                                    take_until=now, hold_until=now, store=store)  # fmt: skip

    outcome = loop.run_until_complete(mysql())
    assert outcome["outcome"] == "unavailable"
    assert "consistent_snapshot" in outcome["message"] and "'hold_mysql' is mysql" in outcome["message"]
    on_mysql = ExportDefinition(name="on_mysql", description="", source=DbApiSource("hold_mysql"), sql=SQL,
                                key_column="id", consistent_snapshot=True)  # fmt: skip
    with pytest.raises(DefinitionInvalid, match=r"consistent_snapshot: .* Airflow connection 'hold_mysql' is mysql"):
        with snapshots.reading(store, other, on_mysql):
            pass


def test_the_trigger_holds_until_the_export_merges(
    definition: ExportDefinition, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    """The trigger as the triggerer runs it: the connection looked up asynchronously, the session's
    header store, one event when the hold ends."""
    store = HeaderStore.from_settings()
    tx = _tx(store)
    now = utcnow()
    trigger = HoldSnapshotTrigger(tx, "hold_pg", (now + timedelta(seconds=30)).isoformat(),
                                  (now + timedelta(hours=1)).isoformat(), poll_seconds=0.05)  # fmt: skip

    async def first_event() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    task = loop.create_task(first_event())
    _until(loop, lambda: store.get(tx).snapshot_state == SnapshotState.HELD)
    assert not task.done()
    assert "(its snapshot is held by Airflow's triggerer)" in _snapshot_events(store, tx)[-1]
    store.transition(tx, State.MERGING, "test")
    _until(loop, task.done)
    assert task.result()["tx_id"] == tx and task.result()["outcome"] == "released"
    assert store.get(tx).snapshot_state == SnapshotState.RELEASED
