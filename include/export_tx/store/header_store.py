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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from export_tx import config
from export_tx.errors import IllegalTransition, NotFound
from export_tx.estimates import HISTORY_RUNS, QueuePlace, queue_place
from export_tx.states import ACTIVE, TERMINAL, BatchState, State, check
from export_tx.store.engine import WRITE, engine_for, store_url_from_connection, writer_lock
from export_tx.store.rows import Batch, Event, Header, NewHeader, PlannedBatch, aware, utcnow
from export_tx.store.tables import (
    LISTED,
    add_missing_columns,
    add_missing_indexes,
    batches,
    events,
    headers,
    metadata,
    widen_columns,
)

_SCHEMA_READY: set[str] = set()


def _queue_places_query() -> sa.Select[Any]:
    """:meth:`HeaderStore.queue_places`' statement, built once (an alias of the header table costs
    more Python than the query costs the database). ``ids``: the transactions asked about."""
    line = headers.alias("line")
    waiting = line.c.state == State.REQUESTED.value
    before = sa.or_(line.c.created_at < headers.c.created_at, line.c.id < headers.c.id)
    ahead = (
        sa.select(sa.func.count())
        .select_from(line)
        # The first bound makes it a range of the index; the second breaks ties by token.
        .where(waiting, line.c.created_at <= headers.c.created_at, before)
        .scalar_subquery()
    )
    total = sa.select(sa.func.count()).select_from(line).where(waiting).scalar_subquery()
    return sa.select(headers.c.id, ahead.label("ahead"), total.label("waiting")).where(
        headers.c.id.in_(sa.bindparam("ids", expanding=True))
    )


_QUEUE_PLACES = _queue_places_query()


class HeaderStore:
    """All reads and writes of headers, batches and events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self._writer = writer_lock(self.engine)

    @classmethod
    def from_settings(cls) -> HeaderStore:
        cfg = config.get_settings()
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
            add_missing_columns(conn)
            add_missing_indexes(conn)
            widen_columns(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, so read-then-write never deadlocks;
        the threads of one process queue for it in :func:`_writer_lock`)."""
        lock = self._writer
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{WRITE: True})
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
        dag_id: str = config.DAG_ID,
        notify_email: str | None = None,
        notify_delay_minutes: float = config.NOTIFY_DELAY_DEFAULT,
        retention_days: int | None = None,
        label: str | None = None,
        format: str = "parquet",
        notify_webhook: str | None = None,
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
                    format=format,
                    notify_webhook=notify_webhook,
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
            row = conn.execute(_GET, {"tx_id": tx_id}).mappings().first()
        if row is None:
            raise NotFound(tx_id)
        return Header.from_row(row)

    def find(self, tx_id: str) -> Header | None:
        try:
            return self.get(tx_id)
        except NotFound:
            return None

    def find_live_duplicate(self, requested_by: str, fingerprint: str, now: datetime) -> Header | None:
        """The requester's newest transaction of the same export (definition, params, format) that
        is still active, or SUCCEEDED with its file still downloadable."""
        with self.engine.connect() as conn:
            values = {"requested_by": requested_by, "fingerprint": fingerprint, "now": now}
            row = conn.execute(_LIVE_DUPLICATE, values).mappings().first()
        return None if row is None else Header.from_row(row)

    def release_stale_dedup_key(self, requested_by: str, dedup_key: str, now: datetime) -> bool:
        """Free the dedup_key a transaction no longer live still holds (SUCCEEDED, its retention
        ended, not yet EXPIRED by housekeeping). True when one was freed: create again."""
        stale = sa.and_(
            headers.c.requested_by == requested_by,
            headers.c.dedup_key == dedup_key,
            headers.c.state == State.SUCCEEDED.value,
            sa.or_(headers.c.result_uri.is_(None), headers.c.expires_at <= now),
        )
        with self._tx() as conn:
            return bool(conn.execute(headers.update().where(stale).values(dedup_key=None)).rowcount)

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
        query = sa.select(*LISTED).where(*conditions).order_by(headers.c.created_at.desc(), headers.c.id)
        count = sa.select(sa.func.count()).select_from(headers).where(*conditions)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).mappings().all()
            total = int(conn.execute(count).scalar_one())
        return [Header.from_row(r) for r in rows], total

    def queue_places(self, tx_ids: Sequence[str]) -> dict[str, QueuePlace]:
        """Where each of these transactions stands in the line of those waiting to start
        (``REQUESTED``, everyone's), in one statement: for each, the ``REQUESTED`` ones created
        before it (the same instant: a smaller token), and how many wait in all. Both are range
        counts on ``ix_export_header_queue``; nothing of anyone else's transaction is read but
        its place in the line. Meant for ``REQUESTED`` transactions (see :mod:`export_tx.estimates`)."""
        if not tx_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(_QUEUE_PLACES, {"ids": list(tx_ids)}).all()
        return {row.id: queue_place(row.ahead, row.waiting) for row in rows}

    def throughput_samples(self, definition: str, limit: int = HISTORY_RUNS) -> list[tuple[int, float]]:
        """The batch phase of ``definition``'s latest exports that succeeded (or have expired since),
        newest first: ``(rows, seconds from the first batch's start to the last batch's end)``.
        Exports with no rows, or from before the batch phase was recorded, are left out. One
        range of ``ix_export_header_history``."""
        h = headers.c
        query = (
            sa.select(h.result_rows, h.batches_started_at, h.last_batch_at)
            .where(
                h.definition == definition,
                h.finished_at.is_not(None),
                h.state.in_([State.SUCCEEDED.value, State.EXPIRED.value]),
                h.result_rows > 0,
                h.batches_started_at.is_not(None),
                h.last_batch_at.is_not(None),
            )
            .order_by(h.finished_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            (int(r.result_rows), (aware(r.last_batch_at) - aware(r.batches_started_at)).total_seconds()) for r in rows
        ]

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

    def expired_partials(self, now: datetime, limit: int = 500) -> list[Header]:
        """CANCELLED headers whose partial file's retention has ended."""
        query = (
            sa.select(*LISTED)
            .where(headers.c.state == State.CANCELLED.value, headers.c.result_uri.isnot(None),
                   headers.c.expires_at <= now)
            .order_by(headers.c.expires_at)
            .limit(limit)
        )  # fmt: skip
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
            if target in (State.FAILED, State.CANCELLED, State.EXPIRED):
                stamp["dedup_key"] = None  # no longer live: the same request makes a new export
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
                            "state": BatchState.PLANNED,
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

    def reset_batches(self, tx_id: str, batch_nos: Sequence[int]) -> None:
        """Batches to run again (their parts are gone): PLANNED, their rows uncounted."""
        if not batch_nos:
            return
        with self._tx() as conn:
            conn.execute(
                batches.update()
                .where(batches.c.tx_id == tx_id, batches.c.batch_no.in_(list(batch_nos)))
                .values(state=BatchState.PLANNED, rows=None, bytes=None, part_uri=None, duration_s=None, done_at=None)
            )
            self._count_batches(conn, tx_id)

    def _count_batches(self, conn: Connection, tx_id: str, last_batch: bool = False) -> None:
        """The header's counters from its batch rows (``last_batch``: a batch just finished, now)."""
        done = sa.select(sa.func.count()).where(batches.c.tx_id == tx_id, batches.c.state == BatchState.DONE)
        written = sa.select(sa.func.coalesce(sa.func.sum(batches.c.rows), 0)).where(
            batches.c.tx_id == tx_id, batches.c.state == BatchState.DONE
        )
        now = utcnow()
        stamps: dict[str, Any] = {"updated_at": now, **({"last_batch_at": now} if last_batch else {})}
        conn.execute(
            headers.update()
            .where(headers.c.id == tx_id)
            .values(batches_done=done.scalar_subquery(), rows_written=written.scalar_subquery(), **stamps)
        )

    def start_batch(self, tx_id: str, batch_no: int) -> int:
        """Count an attempt at a batch; return the attempt number. The first attempt of the
        transaction's first batch marks the start of its batch phase (``batches_started_at``)."""
        with self._tx() as conn:
            # The header before the batch, as record_batch locks them: never a lock cycle. Once
            # set, the condition is false and the header row is neither written nor locked again.
            conn.execute(
                headers.update()
                .where(headers.c.id == tx_id, headers.c.batches_started_at.is_(None))
                .values(batches_started_at=utcnow())
            )
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
                    state=BatchState.DONE,
                    rows=rows,
                    bytes=nbytes,
                    part_uri=part_uri,
                    duration_s=duration_s,
                    done_at=utcnow(),
                )
            )
            self._count_batches(conn, tx_id, last_batch=True)
            first = before != BatchState.DONE
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

    # -- the snapshot of a point-in-time export ------------------------------------------

    def snapshot_change(
        self,
        tx_id: str,
        *,
        expect_id: str | None,
        expect_states: Collection[str | None],
        message: str | None,
        data: dict[str, Any] | None = None,
        active_only: bool = True,
        **values: Any,
    ) -> bool:
        """Set the snapshot's columns (``snapshot_state``, ``snapshot_id``, ``snapshot_at``) only if
        they still are as the caller saw them: ``expect_id`` (None: no snapshot recorded) and one of
        ``expect_states``; with ``active_only`` also only while the transaction neither merges nor
        has ended. Logs ``message`` as a ``snapshot`` event, unless the transaction has ended.
        Compare-and-set: a re-run holder beside one still running can never record a second
        snapshot, nor undo the other's. Returns whether it changed."""
        if set(values) - {"snapshot_state", "snapshot_id", "snapshot_at"}:
            raise ValueError(f"not a snapshot column: {sorted(set(values))}")
        with self._tx() as conn:
            row = conn.execute(
                sa.select(headers.c.state, headers.c.snapshot_state, headers.c.snapshot_id)
                .where(headers.c.id == tx_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(tx_id)
            state = State(row.state)
            if row.snapshot_id != expect_id or row.snapshot_state not in set(expect_states):
                return False
            if active_only and state not in (State.REQUESTED, State.RUNNING):
                return False
            conn.execute(headers.update().where(headers.c.id == tx_id).values(updated_at=utcnow(), **values))
            if message is not None and state not in TERMINAL:
                self._event(conn, tx_id, "snapshot", message, data)
            return True

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


# The statements every API request runs, built once: in a profile of a 50-request burst, building
# the duplicate lookup (its IN list, clauses and cache key) was about half of that call's time.
_GET = sa.select(headers).where(headers.c.id == sa.bindparam("tx_id"))
_LIVE_DUPLICATE = (
    sa.select(*LISTED)
    .where(
        headers.c.requested_by == sa.bindparam("requested_by"),
        headers.c.fingerprint == sa.bindparam("fingerprint"),
        sa.or_(
            headers.c.state.in_([s.value for s in ACTIVE]),
            sa.and_(
                headers.c.state == State.SUCCEEDED.value,
                headers.c.result_uri.isnot(None),
                sa.or_(headers.c.expires_at.is_(None), headers.c.expires_at > sa.bindparam("now")),
            ),
        ),
    )
    .order_by(headers.c.created_at.desc(), headers.c.id.desc())
    .limit(1)
)
