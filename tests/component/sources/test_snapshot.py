"""PostgreSQL snapshots on the real server: exported by the holder's session, imported by the product's
own stream (another session, through ADBC), and what a stream reads inside one — never a row updated,
inserted or deleted after it; and what happens once the holder is gone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_tx.errors import SnapshotUnavailable
from export_tx.sources import PostgresSource, SqliteSource, fetch_all
from export_tx.sources.snapshot import Holder, importing

ROWS_SQL = "SELECT id, v, n FROM snap_rows WHERE id >= :lo ORDER BY id"
FACTS_SQL = (
    "SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro, "
    "CAST(pg_current_snapshot() AS text) AS snap"
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a test: the holder's connection lives in it (as in the triggerer's)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def source(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    monkeypatch_module.setenv("AIRFLOW_CONN_SNAP_PG", pg_database)
    return PostgresSource("snap_pg")


@pytest.fixture
def table(pg_database: str) -> str:
    """``snap_rows``: 2,000 rows, values computed by PostgreSQL."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS snap_rows; DROP SEQUENCE IF EXISTS snap_seq; CREATE SEQUENCE snap_seq; "
            "CREATE TABLE snap_rows (id integer PRIMARY KEY, v text, n bigint); "
            "INSERT INTO snap_rows SELECT g, 'row ' || g, g * 37 % 1000 FROM generate_series(1, 2000) g"
        )
    return pg_database


def _direct(dsn: str) -> list[tuple[Any, ...]]:
    """The table as it is now, read by the test's own connection."""
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute("SELECT id, v, n FROM snap_rows ORDER BY id")]


def _read(source: PostgresSource) -> list[tuple[Any, ...]]:
    """The table through the product's stream (ADBC, a bound parameter: set_config before the COPY)."""
    return [tuple(r.values()) for r in fetch_all(source, ROWS_SQL, {"lo": 1}).to_pylist()]


def _change(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE snap_rows SET v = 'changed', n = -1 WHERE id IN (1, 1000); DELETE FROM snap_rows WHERE id = 2; "
            "INSERT INTO snap_rows VALUES (2001, 'new', 0)"
        )


def _holder(loop: asyncio.AbstractEventLoop, dsn: str, name: str = "export-tx snapshot test") -> Holder:
    return loop.run_until_complete(Holder.connect(dsn, name))


def test_a_stream_reads_the_exported_snapshot_not_what_changed_after(
    source: PostgresSource, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    before = _direct(table)
    holder = _holder(loop, table)
    try:
        taken = loop.run_until_complete(holder.take())
        _change(table)
        after = _direct(table)
        assert after != before and len(after) == len(before)  # one row deleted, one inserted, two updated
        with importing(taken.snapshot_id):
            assert _read(source) == before
            # The stream's own transaction: REPEATABLE READ, read only, on the holder's very snapshot.
            facts = fetch_all(source, FACTS_SQL, {}).to_pylist()[0]
            assert facts == {"iso": "repeatable read", "ro": "on", "snap": taken.pg_snapshot}
            # Inside, as many streams as a plan needs read the same moment.
            assert _read(source) == before
        assert _read(source) == after  # outside: the source as it is now
        assert fetch_all(source, FACTS_SQL, {}).to_pylist()[0]["iso"] == "read committed"
        assert taken.at.tzinfo is not None
    finally:
        loop.run_until_complete(holder.close())


def test_every_stream_is_read_only(source: PostgresSource, table: str, loop: asyncio.AbstractEventLoop) -> None:
    """The driver opens the transaction before any statement of ours: ``default_transaction_read_only``
    alone reached only later ones. Now the stream's own transaction refuses writes too."""
    assert fetch_all(source, FACTS_SQL, {}).to_pylist()[0]["ro"] == "on"
    with pytest.raises(Exception, match="read-only transaction"):
        fetch_all(source, "SELECT nextval('snap_seq') AS n", {})
    holder = _holder(loop, table)
    try:
        taken = loop.run_until_complete(holder.take())
        with importing(taken.snapshot_id), pytest.raises(Exception, match="read-only transaction"):
            fetch_all(source, "SELECT nextval('snap_seq') AS n", {})
    finally:
        loop.run_until_complete(holder.close())
    with psycopg.connect(table) as conn:
        assert conn.execute("SELECT last_value, is_called FROM snap_seq").fetchone() == (1, False)


def test_once_its_holder_is_gone_a_snapshot_is_never_read_as_another_moment(
    source: PostgresSource, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    holder = _holder(loop, table)
    taken = loop.run_until_complete(holder.take())
    loop.run_until_complete(holder.close())
    with importing(taken.snapshot_id), pytest.raises(SnapshotUnavailable, match="has ended"):
        _read(source)

    class Gone(Exception):
        pass

    # Whoever imports says what a lost snapshot means for them (the export's steps: see snapshots.py).
    with importing(taken.snapshot_id, gone=lambda exc: Gone(str(exc))), pytest.raises(Gone, match="invalid snapshot"):
        _read(source)
    # A holder ended by PostgreSQL (pg_terminate_backend, a restart, a dropped connection) alike.
    holder = _holder(loop, table)
    taken = loop.run_until_complete(holder.take())
    with psycopg.connect(table, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
    with importing(taken.snapshot_id), pytest.raises(SnapshotUnavailable):
        _read(source)
    with pytest.raises(psycopg.OperationalError):
        loop.run_until_complete(holder.check())
    loop.run_until_complete(holder.close())


def test_a_second_holder_takes_over_the_same_moment(
    source: PostgresSource, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    before = _direct(table)
    first = _holder(loop, table)
    taken = loop.run_until_complete(first.take())
    _change(table)
    second = _holder(loop, table)
    try:
        adopted = loop.run_until_complete(second.adopt(taken.snapshot_id, taken.at))
        assert adopted.snapshot_id != taken.snapshot_id
        assert (adopted.at, adopted.pg_snapshot) == (taken.at, taken.pg_snapshot)
        loop.run_until_complete(first.close())
        with importing(adopted.snapshot_id):
            assert _read(source) == before  # the first holder is gone; its moment is not
        with importing(taken.snapshot_id), pytest.raises(SnapshotUnavailable):
            _read(source)
    finally:
        loop.run_until_complete(second.close())
    third = _holder(loop, table)
    try:
        with pytest.raises(SnapshotUnavailable, match="no longer knows"):
            loop.run_until_complete(third.adopt(adopted.snapshot_id, adopted.at))
    finally:
        loop.run_until_complete(third.close())


def test_the_holder_outlives_an_idle_in_transaction_timeout(
    source: PostgresSource, table: str, loop: asyncio.AbstractEventLoop
) -> None:
    """A database default of ``idle_in_transaction_session_timeout`` ends sessions idle in a
    transaction; the holder waits idle in its transaction for the whole export, so it turns it off."""
    database = table.rsplit("/", 1)[1]
    with psycopg.connect(table, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 300')
    try:
        before = _direct(table)
        holder = _holder(loop, table)
        plain = psycopg.connect(table)  # a session without the holder's setting, idle in a transaction
        plain.execute("SELECT 1")
        taken = loop.run_until_complete(holder.take())
        _change(table)
        time.sleep(1.5)  # the loop does not run: the holder sits idle in its transaction meanwhile
        with importing(taken.snapshot_id):
            assert _read(source) == before
        loop.run_until_complete(holder.check())
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):  # the timeout is in force
            plain.execute("SELECT 1")
        plain.close()
        loop.run_until_complete(holder.close())
    finally:
        with psycopg.connect(table, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" RESET idle_in_transaction_session_timeout')


def test_a_source_that_cannot_read_a_snapshot_refuses_inside_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
    sqlite = SqliteSource(str(path))
    assert fetch_all(sqlite, "SELECT id FROM t", {}).num_rows == 0
    with importing("00000003-0000001B-1"), pytest.raises(SnapshotUnavailable, match="consistent_snapshot needs"):
        fetch_all(sqlite, "SELECT id FROM t", {})


@pytest.mark.parametrize("bad", ["x'; DROP TABLE t; --", "00000003-0000001b-1", "", "00000003-0000001B-1'"])
def test_only_a_snapshot_id_is_ever_written_into_the_sql(bad: str) -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL snapshot id"), importing(bad):
        pass
