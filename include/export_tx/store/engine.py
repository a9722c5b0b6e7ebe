"""Connections to the header store: one engine per URL and process, SQLite made safe for many
processes and threads (WAL, a busy timeout, writers queued per process), PostgreSQL pooled."""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from export_tx import config


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level: SQLAlchemy's "begin" event issues BEGIN IMMEDIATE so a
    # read-then-write never deadlocks against another task process (WAL + busy timeout).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front; readers (status polls) never wait for it.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


WRITE = "export_tx_write"


@cache
def engine_for(url: str) -> Engine:
    pool = {
        **config.store_pool(),
    }
    if url.startswith("sqlite"):
        from pathlib import Path

        path = sa.engine.make_url(url).database or ""
        memory = path in ("", ":memory:") or path.startswith("file::memory:")
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60}, **({} if memory else pool))
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **pool)


#: One writer at a time per process and SQLite file. SQLite has a single write lock; threads of
#: one process that race for it each sleep in SQLite's busy handler (1, 2, 5, 10 … 100 ms
#: between tries) and a burst of API requests then waits for those sleeps rather than for the
#: writes. Queued here, they take the lock one after another as soon as it is free; other
#: processes (tasks) still wait in the busy handler.
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def writer_lock(engine: Engine) -> threading.RLock | None:
    if engine.dialect.name != "sqlite":
        return None
    key = str(engine.url)
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(key, threading.RLock())


def store_url_from_connection(conn_id: str) -> str:
    """SQLAlchemy URL for an Airflow PostgreSQL connection (resolved when first used)."""
    from export_tx.sources import postgres_uri

    return "postgresql+psycopg://" + postgres_uri(conn_id).split("://", 1)[1]
