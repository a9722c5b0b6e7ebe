"""Point-in-time reads on PostgreSQL: one exported snapshot, held open by one session, imported by
every session that reads for the export.

``pg_export_snapshot()`` names the snapshot of a REPEATABLE READ transaction; another session reads
exactly what it shows by running ``SET TRANSACTION SNAPSHOT '<id>'`` as the first statement of its own
REPEATABLE READ transaction — but only while the exporting transaction is still open. So one session
(:class:`Holder`, asyncio and psycopg 3: it runs in Airflow's triggerer) keeps its transaction open for
the export's life, and every stream of :class:`~export_tx.sources.postgres.PostgresSource` opened
inside :func:`importing` starts its transaction on that snapshot (:func:`begin_reading`). Once the
holder's transaction ends, PostgreSQL answers ``invalid snapshot identifier`` (SQLSTATE 22023) and
the reader fails with what :func:`importing` was told to raise: never a silent read of another moment.

A session that imported a snapshot may export it again under a new id (the same moment):
:meth:`Holder.adopt` is how a restarted holder takes over from one that is still alive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from export_tx.errors import SnapshotUnavailable, sqlstate
from export_tx.sources import adbc

#: What ``pg_export_snapshot()`` returns: virtual transaction id and a counter (``00000003-0000001B-1``).
SNAPSHOT_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{8}-[0-9]{1,10}")
#: SQLSTATE of ``SET TRANSACTION SNAPSHOT`` for an id PostgreSQL does not know (any more).
INVALID_SNAPSHOT = "22023"


def checked_id(snapshot_id: str) -> str:
    """A snapshot id, checked before it is written into ``SET TRANSACTION SNAPSHOT`` (a utility
    statement takes no bound parameters): hexadecimal digits, dashes and a number only."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ValueError(f"not a PostgreSQL snapshot id: {snapshot_id!r:.40}")
    return snapshot_id


@dataclass(frozen=True)
class Importing:
    """The snapshot every PostgreSQL stream opened inside :func:`importing` reads."""

    snapshot_id: str
    #: What to raise when PostgreSQL no longer knows the snapshot (given the driver's error).
    gone: Callable[[BaseException], BaseException]


_IMPORTING: ContextVar[Importing | None] = ContextVar("export_tx_snapshot", default=None)


def _gone_by_default(snapshot_id: str) -> Callable[[BaseException], BaseException]:
    def gone(exc: BaseException) -> BaseException:
        return SnapshotUnavailable(
            f"the snapshot {snapshot_id} of the source is gone: the transaction that held it has ended"
        )

    return gone


@contextmanager
def importing(snapshot_id: str, gone: Callable[[BaseException], BaseException] | None = None) -> Iterator[None]:
    """Every PostgreSQL stream opened inside reads the snapshot ``snapshot_id``; if PostgreSQL no
    longer knows it, the stream raises ``gone(error)``. Other sources refuse to read inside."""
    token = _IMPORTING.set(Importing(checked_id(snapshot_id), gone or _gone_by_default(snapshot_id)))
    try:
        yield
    finally:
        _IMPORTING.reset(token)


def current() -> Importing | None:
    """The snapshot streams must read here, if any."""
    return _IMPORTING.get()


def refuse_inside(label: str) -> None:
    """For sources that cannot read a PostgreSQL snapshot: a snapshot asked for is never ignored."""
    if _IMPORTING.get() is not None:
        raise SnapshotUnavailable(f"{label} cannot read a PostgreSQL snapshot (consistent_snapshot needs PostgreSQL)")


def begin_reading(conn: Any) -> None:
    """The first statements of a PostgreSQL reading session from :func:`adbc.connection`, whose
    transaction is already open (the driver sends ``BEGIN`` when autocommit is turned off, so
    ``default_transaction_read_only`` would only reach the transactions after it): this one is made
    read only, and inside :func:`importing` REPEATABLE READ on the imported snapshot — before any
    query, as PostgreSQL requires (``set_config()`` is a query: it comes after)."""
    wanted = _IMPORTING.get()
    if wanted is None:
        adbc.run(conn, "SET TRANSACTION READ ONLY")
        return
    adbc.run(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        # The id was checked (hexadecimal digits, dashes, a number): a utility statement binds nothing.
        adbc.run(conn, f"SET TRANSACTION SNAPSHOT '{checked_id(wanted.snapshot_id)}'")
    except Exception as exc:
        if sqlstate(exc) == INVALID_SNAPSHOT:
            raise wanted.gone(exc) from exc
        raise


# -- the holder (asyncio: Airflow's triggerer) -------------------------------------------------------


@dataclass(frozen=True)
class Taken:
    """A snapshot exported by a :class:`Holder`."""

    snapshot_id: str
    #: PostgreSQL's clock right after the snapshot was taken: the moment the export shows.
    at: datetime
    #: ``pg_current_snapshot()`` (``xmin:xmax:in-progress ids``), for whoever checks it in PostgreSQL.
    pg_snapshot: str


#: Settings the holding session gives itself. It waits idle in its transaction for the whole export,
#: so a server, database or role default of ``idle_in_transaction_session_timeout`` (or, PostgreSQL
#: 17, ``transaction_timeout``) would end it — and the snapshot — early; the holder bounds its own hold.
_SESSION_SETUP = (
    "SELECT set_config(name, '0', false) FROM pg_settings "
    "WHERE name IN ('idle_in_transaction_session_timeout', 'transaction_timeout', 'statement_timeout')"
)
_TAKE = "SELECT pg_export_snapshot(), clock_timestamp(), CAST(pg_current_snapshot() AS text)"


class Holder:
    """One PostgreSQL session (psycopg 3, asyncio) with a REPEATABLE READ, READ ONLY transaction
    kept open, its snapshot exported. Closing it ends the snapshot for every later reader."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, uri: str, application_name: str) -> Holder:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            uri,
            autocommit=True,
            connect_timeout=30,
            application_name=application_name[:63],
            # A holder whose network died is noticed by both ends within about a minute, not hours.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            await conn.execute(_SESSION_SETUP)
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    @property
    def backend_pid(self) -> int:
        return int(self.conn.info.backend_pid)

    async def take(self) -> Taken:
        """Export the transaction's snapshot (its first query takes it)."""
        cursor = await self.conn.execute(_TAKE)
        snapshot_id, at, pg_snapshot = await cursor.fetchone()
        return Taken(str(snapshot_id), at, str(pg_snapshot))

    async def adopt(self, snapshot_id: str, at: datetime) -> Taken:
        """Import ``snapshot_id`` (taken at ``at`` by another holder, still open) and export it again
        under a new id: the same moment, held by this session. Raises :class:`SnapshotUnavailable`
        when PostgreSQL no longer knows it."""
        import psycopg

        try:
            # The id was checked (hexadecimal digits, dashes, a number): a utility statement binds nothing.
            await self.conn.execute(f"SET TRANSACTION SNAPSHOT '{checked_id(snapshot_id)}'")
        except psycopg.Error as exc:
            if exc.sqlstate == INVALID_SNAPSHOT:
                raise SnapshotUnavailable(f"PostgreSQL no longer knows the snapshot {snapshot_id}") from exc
            raise
        taken = await self.take()
        return Taken(taken.snapshot_id, at, taken.pg_snapshot)

    async def check(self) -> None:
        """One round trip in the open transaction: raises if the session is gone."""
        await self.conn.execute("SELECT 1")

    async def close(self) -> None:
        await self.conn.close()
