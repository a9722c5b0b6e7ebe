"""The header store's tables (SQLAlchemy Core, the same on SQLite and PostgreSQL) and their
additive evolution: a column or an index added since a table was created is added in place."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from export_tx import config
from export_tx.states import BatchState, WebhookState

metadata = sa.MetaData()
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

headers = sa.Table(
    config.HEADER_TABLE,
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
    # The file format (export_tx.formats); headers written before formats existed are Parquet.
    sa.Column("format", sa.String(20), nullable=False, server_default="parquet"),
    sa.Column("idempotency_key", sa.String(250)),
    sa.Column("request_hash", sa.String(64)),
    # What makes two requests the same export: sha256 of the definition, the params (a null one as
    # if left out) and the format (:func:`export_tx.request.fingerprint`).
    sa.Column("fingerprint", sa.String(64)),
    # The fingerprint while the transaction is live (active, or SUCCEEDED and downloadable), unless
    # its request said "force": unique per requester, so two identical requests racing make one.
    sa.Column("dedup_key", sa.String(64)),
    sa.Column("notify_email", sa.Text),  # up to 10 addresses of 254 characters
    sa.Column("notify_delay_minutes", sa.Float, nullable=False),
    sa.Column("retention_days", sa.Integer),
    sa.Column("notification_state", sa.String(30), nullable=False),
    sa.Column("notification_sent_at", _TS),
    # The requester's webhook (optional): its URL (checked against the deployment's allow-list),
    # how its delivery went, and how many POSTs it took. Headers from before webhooks: none asked.
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_state", sa.String(30), nullable=False, server_default=WebhookState.NOT_REQUESTED.value),
    sa.Column("webhook_delivered_at", _TS),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("batches_total", sa.Integer),
    sa.Column("batches_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_planned", sa.BigInteger),
    sa.Column("rows_written", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("result_uri", sa.Text),
    sa.Column("result_rows", sa.BigInteger),
    sa.Column("result_bytes", sa.BigInteger),
    sa.Column("result_sha256", sa.String(64)),
    sa.Column("result_schema", sa.JSON),
    # A partial file (cancelled with keep_partial): the key ranges of the batches it holds.
    sa.Column("result_partial", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("result_ranges", sa.JSON),
    # Times the transaction was resumed after it failed (POST …/retry).
    sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
    # The columns fixed at planning (source types, file types, how each is read): every batch,
    # the merge and a zero-row result use exactly these.
    sa.Column("schema_plan", sa.JSON),
    sa.Column("expires_at", _TS),
    sa.Column("error", sa.Text),
    # A point-in-time export (its definition's consistent_snapshot): the state of its snapshot of the
    # source (export_tx.states.SnapshotState; NULL: not asked for), PostgreSQL's id of the exported
    # snapshot while it is held, and the moment it shows (the source as it was then).
    sa.Column("snapshot_state", sa.String(20)),
    sa.Column("snapshot_id", sa.String(64)),
    sa.Column("snapshot_at", _TS),
    sa.Column("downloaded_at", _TS),
    sa.Column("cancelled_by", sa.String(250)),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("updated_at", _TS, nullable=False),
    sa.Column("started_at", _TS),
    sa.Column("finished_at", _TS),
    # The batch phase, for the estimated finish (export_tx.estimates): when the first batch's
    # first attempt began, and when a batch last finished.
    sa.Column("batches_started_at", _TS),
    sa.Column("last_batch_at", _TS),
    sa.Index("ix_export_header_requester", "requested_by", "created_at"),
    sa.Index("ix_export_header_state", "state"),
    sa.Index("ix_export_header_fingerprint", "requested_by", "fingerprint"),
    # NULLs never collide: a forced or ended transaction holds no dedup_key.
    sa.Index("uq_export_header_dedup", "requested_by", "dedup_key", unique=True),
    # The line of those waiting to start: a place in it is a range count (HeaderStore.queue_places).
    sa.Index("ix_export_header_queue", "state", "created_at", "id"),
    # A definition's latest finished exports, for its throughput history.
    sa.Index("ix_export_header_history", "definition", "finished_at"),
    sa.UniqueConstraint("requested_by", "idempotency_key", name="uq_export_header_idempotency"),
)

batches = sa.Table(
    config.BATCH_TABLE,
    metadata,
    sa.Column(
        "tx_id", sa.String(250), sa.ForeignKey(f"{config.HEADER_TABLE}.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    # Key bounds, JSON-encoded so integer and text keys round-trip exactly: lo <= key < hi.
    sa.Column("lo", sa.Text, nullable=False),
    sa.Column("hi", sa.Text),
    sa.Column("planned_rows", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(20), nullable=False, server_default=BatchState.PLANNED.value),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("part_uri", sa.Text),
    sa.Column("duration_s", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("done_at", _TS),
)

events = sa.Table(
    config.EVENT_TABLE,
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
#: A listing's columns: every column but the stored column plan.
LISTED = [c for c in headers.c if c.name != "schema_plan"]


def add_missing_columns(conn: Connection) -> None:
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


def add_missing_indexes(conn: Connection) -> None:
    """An index added to a table since it was created is created in place (after
    :func:`add_missing_columns`, so its columns exist). Idempotent. The header table holds one
    row per export: building an index on it takes moments, inside the schema's own transaction."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            if index.name not in present:
                index.create(conn)


def widen_columns(conn: Connection) -> None:
    """Columns a later version made wider (PostgreSQL enforces lengths; SQLite does not)."""
    if conn.dialect.name != "postgresql":
        return
    widened = {(config.HEADER_TABLE, "notify_email")}
    inspector = sa.inspect(conn)
    for table, column in widened:
        current = {c["name"]: c["type"] for c in inspector.get_columns(table)}.get(column)
        if isinstance(current, sa.String) and getattr(current, "length", None):
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE text")
