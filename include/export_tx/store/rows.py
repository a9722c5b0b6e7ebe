"""What the header store hands out and takes in: a header, a batch of the plan, an event, a new
header. Frozen dataclasses built from rows; timestamps always timezone-aware (UTC)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from export_tx import config
from export_tx.states import TERMINAL, NotificationState, State, WebhookState


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: Any) -> Any:
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
    #: The file format's name (:mod:`export_tx.formats`).
    format: str = "parquet"
    #: A point-in-time export: its snapshot's state (:class:`SnapshotState`; None: not asked for),
    #: PostgreSQL's snapshot id while held, and the moment the export reads the source as of.
    snapshot_state: str | None = None
    snapshot_id: str | None = None
    snapshot_at: datetime | None = None
    #: The webhook the request gave (None: none), its state (:class:`WebhookState`), when it was
    #: delivered and how many POSTs were made.
    webhook_url: str | None = None
    webhook_state: str = WebhookState.NOT_REQUESTED.value
    webhook_delivered_at: datetime | None = None
    webhook_attempts: int = 0
    fingerprint: str | None = None
    dedup_key: str | None = None
    #: A partial file (cancelled with keep_partial) and the key ranges it covers.
    result_partial: bool = False
    result_ranges: list[dict[str, Any]] | None = None
    #: Times resumed after failing (POST …/retry).
    resumes: int = 0
    #: The batch phase (:mod:`export_tx.estimates`): when the first batch began, when one last finished.
    batches_started_at: datetime | None = None
    last_batch_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> Header:
        # A listing leaves out the stored column plan (``LISTED``): it is None there.
        values = {f.name: aware(row.get(f.name)) for f in fields(cls)}
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
        values = {f.name: aware(row[f.name]) for f in fields(cls)}
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
        return cls(**{f.name: aware(row[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class NewHeader:
    """A header to create (:meth:`HeaderStore.create_many`): the request, REQUESTED."""

    tx_id: str
    definition: str
    params: dict[str, Any]
    batch_size: int | None
    requested_by: str
    dag_id: str = config.DAG_ID
    notify_email: str | None = None
    notify_delay_minutes: float = config.NOTIFY_DELAY_DEFAULT
    retention_days: int | None = None
    label: str | None = None
    format: str = "parquet"
    #: The request's field ``notify_webhook``: stored as the header's ``webhook_url``.
    notify_webhook: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    #: Unique per requester while live: None for a request that said "force" (or not from the API).
    dedup_key: str | None = None

    def row(self, now: datetime) -> dict[str, Any]:
        from export_tx.request import fingerprint

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
            "fingerprint": fingerprint(self.definition, self.params, self.format),
            "dedup_key": self.dedup_key,
            "notify_email": self.notify_email,
            "notify_delay_minutes": self.notify_delay_minutes,
            "retention_days": self.retention_days,
            "label": self.label,
            "format": self.format,
            "webhook_url": self.notify_webhook,
            "webhook_state": WebhookState.PENDING if self.notify_webhook else WebhookState.NOT_REQUESTED,
            "notification_state": NotificationState.PENDING if self.notify_email else NotificationState.NOT_REQUESTED,
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
