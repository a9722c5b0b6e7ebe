"""The header store: transaction headers, their batch plan and their event log.

SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (production, through an
Airflow connection). Tables are created idempotently by :meth:`HeaderStore.ensure_schema`.
Every state change goes through :meth:`HeaderStore.transition`, which asks
:mod:`export_tx.states` and updates with a compare-and-set, so two processes can never both
move the same header; counters are derived from the batch rows, so re-running a batch
counts it once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from export_tx import settings
from export_tx.states import TERMINAL, IllegalTransition, State, check

metadata = sa.MetaData()
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

headers = sa.Table(
    settings.HEADER_TABLE,
    metadata,
    sa.Column("id", sa.String(250), primary_key=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("definition", sa.String(100), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("batch_size", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("requested_by", sa.String(250), nullable=False),
    # The requester's own name for the export, shown beside the token (optional).
    sa.Column("label", sa.String(100)),
    sa.Column("idempotency_key", sa.String(250)),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("notify_email", sa.Text),  # up to 10 addresses of 254 characters
    sa.Column("notify_delay_minutes", sa.Float, nullable=False),
    sa.Column("retention_days", sa.Integer),
    sa.Column("notification_state", sa.String(30), nullable=False),
    sa.Column("notification_sent_at", _TS),
    sa.Column("batches_total", sa.Integer),
    sa.Column("batches_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_planned", sa.BigInteger),
    sa.Column("rows_written", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("result_uri", sa.Text),
    sa.Column("result_rows", sa.BigInteger),
    sa.Column("result_bytes", sa.BigInteger),
    sa.Column("result_sha256", sa.String(64)),
    sa.Column("result_schema", sa.JSON),
    # The columns fixed at planning (source types, file types, how each is read): every batch,
    # the merge and a zero-row result use exactly these.
    sa.Column("schema_plan", sa.JSON),
    sa.Column("expires_at", _TS),
    sa.Column("error", sa.Text),
    sa.Column("downloaded_at", _TS),
    sa.Column("cancelled_by", sa.String(250)),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("started_at", _TS),
    sa.Column("finished_at", _TS),
    sa.Index("ix_export_header_requester", "requested_by", "created_at"),
    sa.Index("ix_export_header_state", "state"),
    sa.UniqueConstraint("requested_by", "idempotency_key", name="uq_export_header_idempotency"),
)

batches = sa.Table(
    settings.BATCH_TABLE,
    metadata,
    sa.Column(
        "tx_id", sa.String(250), sa.ForeignKey(f"{settings.HEADER_TABLE}.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    # Key bounds, JSON-encoded so integer and text keys round-trip exactly: lo <= key < hi.
    sa.Column("lo", sa.Text, nullable=False),
    sa.Column("hi", sa.Text),
    sa.Column("planned_rows", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(20), nullable=False, server_default="PLANNED"),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("part_uri", sa.Text),
    sa.Column("duration_s", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("done_at", _TS),
)

events = sa.Table(
    settings.EVENT_TABLE,
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("tx_id", sa.String(250), nullable=False),
    sa.Column("at", _TS, nullable=False),
    sa.Column("kind", sa.String(30), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON),
    sa.Index("ix_export_event_tx", "tx_id", "id"),
)


#: What a listing reads: every column but the stored column plan (kilobytes a header, read by
#: the tasks only).
_LISTED = [c for c in headers.c if c.name != "schema_plan"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: Any) -> Any:
    # SQLite hands timestamps back naive; they were written in UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Header:
    id: str
    dag_id: str
    definition: str
    params: dict[str, Any]
    batch_size: int
    state: State
    requested_by: str
    idempotency_key: str | None
    request_hash: str | None
    notify_email: str | None
    notify_delay_minutes: float
    retention_days: int | None
    notification_state: str
    notification_sent_at: datetime | None
    batches_total: int | None
    batches_done: int
    rows_planned: int | None
    rows_written: int
    result_uri: str | None
    result_rows: int | None
    result_bytes: int | None
    result_sha256: str | None
    result_schema: list[dict[str, Any]] | None
    schema_plan: dict[str, Any] | None
    expires_at: datetime | None
    error: str | None
    downloaded_at: datetime | None
    cancelled_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    label: str | None = None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> Header:
        # A listing leaves out the stored column plan (``_LISTED``): it is None there.
        values = {f.name: _aware(row.get(f.name)) for f in fields(cls)}
        values["state"] = State(values["state"])
        return cls(**values)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Batch:
    tx_id: str
    batch_no: int
    lo: Any
    hi: Any
    planned_rows: int
    state: str
    rows: int | None
    bytes: int | None
    part_uri: str | None
    duration_s: float | None
    attempts: int
    done_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> Batch:
        values = {f.name: _aware(row[f.name]) for f in fields(cls)}
        values["lo"] = json.loads(values["lo"])
        values["hi"] = None if values["hi"] is None else json.loads(values["hi"])
        return cls(**values)


@dataclass(frozen=True)
class PlannedBatch:
    batch_no: int
    lo: Any
    hi: Any  # None: open-ended (the last batch)
    planned_rows: int


@dataclass(frozen=True)
class Event:
    id: int
    tx_id: str
    at: datetime
    kind: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> Event:
        return cls(**{f.name: _aware(row[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class NewHeader:
    """A header to create (:meth:`HeaderStore.create_many`): the request, REQUESTED."""

    tx_id: str
    definition: str
    params: dict[str, Any]
    batch_size: int | None
    requested_by: str
    dag_id: str = settings.DAG_ID
    notify_email: str | None = None
    notify_delay_minutes: float = settings.NOTIFY_DELAY_DEFAULT
    retention_days: int | None = None
    label: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.tx_id,
            "dag_id": self.dag_id,
            "definition": self.definition,
            "params": self.params,
            "batch_size": self.batch_size or 0,  # 0: automatic, until the plan stores the size it chose
            "state": State.REQUESTED.value,
            "requested_by": self.requested_by,
            "idempotency_key": self.idempotency_key,
            "request_hash": self.request_hash,
            "notify_email": self.notify_email,
            "notify_delay_minutes": self.notify_delay_minutes,
            "retention_days": self.retention_days,
            "label": self.label,
            "notification_state": "pending" if self.notify_email else "not_requested",
            "created_at": now,
            "updated_at": now,
        }

    def event(self, now: datetime) -> dict[str, Any]:
        return {
            "tx_id": self.tx_id,
            "at": now,
            "kind": "state",
            "message": f"{State.REQUESTED.value}: requested by {self.requested_by}",
            "data": {"state": State.REQUESTED.value, "definition": self.definition, "params": self.params},
        }


class NotFound(KeyError):
    pass


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
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


_WRITE = "export_tx_write"

#: Connections each process keeps open to the store, and how many more it may open under a burst
#: (``EXPORT_TX_STORE_POOL_SIZE`` / ``EXPORT_TX_STORE_MAX_OVERFLOW``). The api-server answers
#: from a dozen threads or more at once: a pool smaller than that makes requests wait for a
#: connection, or open and close a PostgreSQL connection each (milliseconds), instead of reusing
#: one. Opened only when needed, so a task process still holds one or two.
POOL_SIZE_DEFAULT = 10
MAX_OVERFLOW_DEFAULT = 10


def _pool_setting(name: str, default: int) -> int:
    import os

    raw = os.environ.get(name, "").strip()
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


@cache
def engine_for(url: str) -> Engine:
    pool = {
        "pool_size": _pool_setting("EXPORT_TX_STORE_POOL_SIZE", POOL_SIZE_DEFAULT),
        "max_overflow": _pool_setting("EXPORT_TX_STORE_MAX_OVERFLOW", MAX_OVERFLOW_DEFAULT),
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


def _writer_lock(engine: Engine) -> threading.RLock | None:
    if engine.dialect.name != "sqlite":
        return None
    key = str(engine.url)
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(key, threading.RLock())


def _add_missing_columns(conn: Connection) -> None:
    """Additive schema evolution: a column added to a table since it was created is added in
    place (it must be nullable or have a server default). Idempotent, like ``create_all``."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(f"cannot add NOT NULL column {table.name}.{column.name} without a default")
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def _widen_columns(conn: Connection) -> None:
    """Columns a later version made wider (PostgreSQL enforces lengths; SQLite does not)."""
    if conn.dialect.name != "postgresql":
        return
    widened = {(settings.HEADER_TABLE, "notify_email")}
    inspector = sa.inspect(conn)
    for table, column in widened:
        current = {c["name"]: c["type"] for c in inspector.get_columns(table)}.get(column)
        if isinstance(current, sa.String) and getattr(current, "length", None):
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE text")


def store_url_from_connection(conn_id: str) -> str:
    """SQLAlchemy URL for an Airflow PostgreSQL connection (resolved when first used)."""
    from export_tx.sources import postgres_uri

    return "postgresql+psycopg://" + postgres_uri(conn_id).split("://", 1)[1]


_SCHEMA_READY: set[str] = set()


class HeaderStore:
    """All reads and writes of headers, batches and events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self._writer = _writer_lock(self.engine)

    @classmethod
    def from_settings(cls) -> HeaderStore:
        cfg = settings.get_settings()
        url = store_url_from_connection(cfg.store_conn_id) if cfg.store_conn_id else cfg.store_url
        store = cls(url)
        if url not in _SCHEMA_READY:
            # Once per process and database: a status read stays one indexed lookup.
            store.ensure_schema()
            _SCHEMA_READY.add(url)
        return store

    # -- schema ------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables if missing; safe to call from many processes at once."""
        with self._tx() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727270001)"))
            metadata.create_all(conn, checkfirst=True)
            _add_missing_columns(conn)
            _widen_columns(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, so read-then-write never deadlocks;
        the threads of one process queue for it in :func:`_writer_lock`)."""
        lock = self._writer
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

    # -- headers -----------------------------------------------------------------------

    def create(
        self,
        tx_id: str,
        *,
        definition: str,
        params: dict[str, Any],
        batch_size: int | None,
        requested_by: str,
        dag_id: str = settings.DAG_ID,
        notify_email: str | None = None,
        notify_delay_minutes: float = settings.NOTIFY_DELAY_DEFAULT,
        retention_days: int | None = None,
        label: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[Header, bool]:
        """Insert a REQUESTED header unless one exists; return it and whether it was created."""
        return self.create_many(
            [
                NewHeader(
                    tx_id,
                    definition=definition,
                    params=params,
                    batch_size=batch_size,
                    requested_by=requested_by,
                    dag_id=dag_id,
                    notify_email=notify_email,
                    notify_delay_minutes=notify_delay_minutes,
                    retention_days=retention_days,
                    label=label,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                )
            ]
        )[0]

    def create_many(self, new: Sequence[NewHeader]) -> list[tuple[Header, bool]]:
        """:meth:`create` for several headers in one transaction (a burst of API requests: one
        write and one commit instead of one each, and a few statements instead of four each).
        For each, in order: the header and whether it was created. A unique key taken already (an
        Idempotency-Key) raises ``IntegrityError`` and creates none of them."""
        if not new:
            return []
        now = utcnow()
        ids = [n.tx_id for n in new]
        if len(set(ids)) != len(ids):
            raise ValueError("create_many: the same transaction id twice")
        with self._tx() as conn:
            taken = {
                row["id"]: Header.from_row(row)
                for row in conn.execute(sa.select(headers).where(headers.c.id.in_(ids))).mappings()
            }
            fresh = [n for n in new if n.tx_id not in taken]
            if fresh:
                conn.execute(headers.insert(), [n.row(now) for n in fresh])
                conn.execute(events.insert(), [n.event(now) for n in fresh])
                query = sa.select(headers).where(headers.c.id.in_([n.tx_id for n in fresh]))
                created = {row["id"]: Header.from_row(row) for row in conn.execute(query).mappings()}
            else:
                created = {}
        return [(taken[i], False) if i in taken else (created[i], True) for i in ids]

    def get(self, tx_id: str) -> Header:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(headers).where(headers.c.id == tx_id)).mappings().first()
        if row is None:
            raise NotFound(tx_id)
        return Header.from_row(row)

    def find(self, tx_id: str) -> Header | None:
        try:
            return self.get(tx_id)
        except NotFound:
            return None

    def find_by_idempotency_key(self, requested_by: str, key: str) -> Header | None:
        query = sa.select(headers).where(headers.c.requested_by == requested_by, headers.c.idempotency_key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else Header.from_row(row)

    def list_headers(
        self,
        *,
        requested_by: str | None = None,
        state: State | None = None,
        definition: str | None = None,
        search: str | None = None,
        created_from: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Header], int]:
        """Headers newest first, filtered (``requested_by=None``: everyone's); and the total.
        ``search`` finds a part of the token or the label, case-insensitively (a bound LIKE
        pattern with its wildcards escaped)."""
        conditions: list[Any] = []
        if search:
            pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conditions.append(
                sa.or_(
                    sa.func.lower(headers.c.id).like(pattern, escape="\\"),
                    sa.func.lower(headers.c.label).like(pattern, escape="\\"),
                )
            )
        if created_from is not None:
            conditions.append(headers.c.created_at >= created_from)
        if created_before is not None:
            conditions.append(headers.c.created_at < created_before)
        if requested_by is not None:
            conditions.append(headers.c.requested_by == requested_by)
        if state is not None:
            conditions.append(headers.c.state == state.value)
        if definition is not None:
            conditions.append(headers.c.definition == definition)
        query = sa.select(*_LISTED).where(*conditions).order_by(headers.c.created_at.desc(), headers.c.id)
        count = sa.select(sa.func.count()).select_from(headers).where(*conditions)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).mappings().all()
            total = int(conn.execute(count).scalar_one())
        return [Header.from_row(r) for r in rows], total

    def expired(self, now: datetime, limit: int = 500) -> list[Header]:
        """SUCCEEDED headers whose retention has ended."""
        query = (
            sa.select(headers)
            .where(headers.c.state == State.SUCCEEDED.value, headers.c.expires_at <= now)
            .order_by(headers.c.expires_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Header.from_row(r) for r in conn.execute(query).mappings().all()]

    def in_states(self, states: Sequence[State], *, updated_before: datetime | None = None,
                  finished_after: datetime | None = None, limit: int = 1000) -> list[Header]:  # fmt: skip
        """Headers in any of ``states``, optionally untouched since / finished after a moment."""
        query = sa.select(headers).where(headers.c.state.in_([s.value for s in states]))
        if updated_before is not None:
            query = query.where(headers.c.updated_at < updated_before)
        if finished_after is not None:
            query = query.where(headers.c.finished_at >= finished_after)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(headers.c.created_at).limit(limit)).mappings().all()
        return [Header.from_row(r) for r in rows]

    def transition(
        self, tx_id: str, target: State, message: str, *, data: dict[str, Any] | None = None, **values: Any
    ) -> bool:
        """Move the header to ``target`` (with extra column ``values``) and log the event.

        Returns False when the header already is in ``target`` and ``target`` is not terminal
        (a retried task repeating its step); raises :class:`IllegalTransition` otherwise.
        """
        with self._tx() as conn:
            # FOR UPDATE locks the row on PostgreSQL; on SQLite, BEGIN IMMEDIATE already did.
            row = conn.execute(sa.select(headers.c.state).where(headers.c.id == tx_id).with_for_update()).first()
            if row is None:
                raise NotFound(tx_id)
            current = State(row.state)
            if current == target and target not in TERMINAL:
                return False
            check(current, target)
            now = utcnow()
            stamp: dict[str, Any] = {"updated_at": now}
            if target == State.RUNNING:
                stamp["started_at"] = now
            if target in TERMINAL and target != State.EXPIRED:
                stamp["finished_at"] = now
            result = conn.execute(
                headers.update()
                .where(headers.c.id == tx_id, headers.c.state == current.value)
                .values(state=target.value, **stamp, **values)
            )
            if result.rowcount != 1:
                raise NotFound(tx_id)
            self._event(conn, tx_id, "state", f"{target.value}: {message}", {"state": target.value, **(data or {})})
            return True

    def fail(self, tx_id: str, message: str, *, state: State = State.FAILED, **values: Any) -> bool:
        """End an active transaction as FAILED (or CANCELLED); a terminal one is left as it is."""
        try:
            return self.transition(tx_id, state, message, error=message if state == State.FAILED else None, **values)
        except IllegalTransition:
            return False

    def update(self, tx_id: str, **values: Any) -> None:
        """Set non-state columns (notification, downloaded_at, …)."""
        if "state" in values:
            raise ValueError("use transition() to change the state")
        with self._tx() as conn:
            conn.execute(headers.update().where(headers.c.id == tx_id).values(updated_at=utcnow(), **values))

    # -- plan and batches --------------------------------------------------------------

    def save_plan(
        self,
        tx_id: str,
        plan: Sequence[PlannedBatch],
        *,
        batch_size: int,
        note: str,
        schema_plan: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> list[Batch]:
        """Store the plan once: a retried or resumed run gets the stored plan back unchanged."""
        with self._tx() as conn:
            # Two planners (a retry racing a slow first attempt) serialise on the header row.
            conn.execute(sa.select(headers.c.id).where(headers.c.id == tx_id).with_for_update())
            stored = (
                conn.execute(sa.select(batches).where(batches.c.tx_id == tx_id).order_by(batches.c.batch_no))
                .mappings()
                .all()
            )
            if (
                stored
                or conn.execute(sa.select(headers.c.batches_total).where(headers.c.id == tx_id)).scalar() is not None
            ):
                return [Batch.from_row(r) for r in stored]
            if plan:
                conn.execute(
                    batches.insert(),
                    [
                        {
                            "tx_id": tx_id,
                            "batch_no": b.batch_no,
                            "lo": json.dumps(b.lo),
                            "hi": None if b.hi is None else json.dumps(b.hi),
                            "planned_rows": b.planned_rows,
                            "state": "PLANNED",
                            "attempts": 0,
                        }
                        for b in plan
                    ],
                )
            rows = sum(b.planned_rows for b in plan)
            conn.execute(
                headers.update()
                .where(headers.c.id == tx_id)
                .values(
                    batches_total=len(plan),
                    rows_planned=rows,
                    batch_size=batch_size,
                    schema_plan=schema_plan,
                    updated_at=utcnow(),
                )
            )
            details = {"batches": len(plan), "rows": rows, "batch_size": batch_size, **(data or {})}
            self._event(conn, tx_id, "plan", note, details)
            stored = (
                conn.execute(sa.select(batches).where(batches.c.tx_id == tx_id).order_by(batches.c.batch_no))
                .mappings()
                .all()
            )
            return [Batch.from_row(r) for r in stored]

    def plan(self, tx_id: str) -> list[Batch]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(sa.select(batches).where(batches.c.tx_id == tx_id).order_by(batches.c.batch_no))
                .mappings()
                .all()
            )
        return [Batch.from_row(r) for r in rows]

    def batch(self, tx_id: str, batch_no: int) -> Batch:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(batches).where(batches.c.tx_id == tx_id, batches.c.batch_no == batch_no))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"{tx_id} batch {batch_no}")
        return Batch.from_row(row)

    def start_batch(self, tx_id: str, batch_no: int) -> int:
        """Count an attempt at a batch; return the attempt number."""
        with self._tx() as conn:
            conn.execute(
                batches.update()
                .where(batches.c.tx_id == tx_id, batches.c.batch_no == batch_no)
                .values(attempts=batches.c.attempts + 1)
            )
            return int(
                conn.execute(
                    sa.select(batches.c.attempts).where(batches.c.tx_id == tx_id, batches.c.batch_no == batch_no)
                ).scalar_one()
            )

    def record_batch(
        self,
        tx_id: str,
        batch_no: int,
        *,
        rows: int,
        nbytes: int,
        part_uri: str,
        duration_s: float,
        peak_rss_bytes: int | None = None,
    ) -> bool | None:
        """Mark a batch done with its rows (and, for the log, its task's peak RSS). Idempotent: the
        header's counters are derived from the batch rows, so recording batch N twice counts it once.
        Returns True the first time, False on a repeat, and None — recording nothing — once the
        transaction has ended (its log gets nothing after its terminal state)."""
        with self._tx() as conn:
            # Lock the header first: the counters below are then computed from a snapshot taken
            # after every concurrent batch's commit (PostgreSQL READ COMMITTED), never a stale one.
            current = conn.execute(
                sa.select(headers.c.state).where(headers.c.id == tx_id).with_for_update()
            ).scalar_one()
            if State(current) in TERMINAL:
                return None
            before = conn.execute(
                sa.select(batches.c.state).where(batches.c.tx_id == tx_id, batches.c.batch_no == batch_no)
            ).scalar_one()
            conn.execute(
                batches.update()
                .where(batches.c.tx_id == tx_id, batches.c.batch_no == batch_no)
                .values(
                    state="DONE", rows=rows, bytes=nbytes, part_uri=part_uri, duration_s=duration_s, done_at=utcnow()
                )
            )
            done = sa.select(sa.func.count()).where(batches.c.tx_id == tx_id, batches.c.state == "DONE")
            written = sa.select(sa.func.coalesce(sa.func.sum(batches.c.rows), 0)).where(
                batches.c.tx_id == tx_id, batches.c.state == "DONE"
            )
            conn.execute(
                headers.update()
                .where(headers.c.id == tx_id)
                .values(
                    batches_done=done.scalar_subquery(), rows_written=written.scalar_subquery(), updated_at=utcnow()
                )
            )
            first = before != "DONE"
            verb = "done" if first else "re-run, counted once"
            self._event(
                conn,
                tx_id,
                "batch",
                f"batch {batch_no} {verb}: {rows:,} rows in {duration_s:.2f} s",
                {
                    "batch_no": batch_no,
                    "rows": rows,
                    "bytes": nbytes,
                    "duration_s": round(duration_s, 3),
                    "peak_rss_bytes": peak_rss_bytes,
                },
            )
            return first

    # -- events ------------------------------------------------------------------------

    def _event(self, conn: Connection, tx_id: str, kind: str, message: str, data: dict[str, Any] | None) -> None:
        conn.execute(events.insert().values(tx_id=tx_id, at=utcnow(), kind=kind, message=message, data=data))

    def add_event(self, tx_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with self._tx() as conn:
            self._event(conn, tx_id, kind, message, data)

    def events(self, tx_id: str, *, after_id: int = 0, limit: int = 100, kind: str | None = None) -> list[Event]:
        query = sa.select(events).where(events.c.tx_id == tx_id, events.c.id > after_id)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(events.c.id).limit(limit)).mappings().all()
        return [Event.from_row(r) for r in rows]

    def last_event(self, tx_id: str, kind: str) -> Event | None:
        query = sa.select(events).where(events.c.tx_id == tx_id, events.c.kind == kind)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(events.c.id.desc()).limit(1)).mappings().first()
        return None if row is None else Event.from_row(row)
