"""The transaction resource as clients see it (design doc: REST contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field

from export_tx.config import DAG_ID
from export_tx.store import Event, Header

PREFIX = "/exports/v1"


class Progress(BaseModel):
    batches_total: int | None
    batches_done: int
    rows_written: int
    percent: int


class Result(BaseModel):
    uri: str = Field(description="where to download the file (this API's download link)")
    storage_uri: str | None = Field(None, description="where the file is stored; shown to admins only")
    rows: int
    bytes: int
    sha256: str
    expires_at: datetime | None


class Webhook(BaseModel):
    url: str | None = Field(description="the URL the signed event is POSTed to; null: none was given")
    state: str = Field(description="not_requested, pending, delivered or failed")
    delivered_at: datetime | None
    attempts: int = Field(description="POSTs made so far")


class Notification(BaseModel):
    email: str | None
    state: str
    sent_at: datetime | None
    webhook: Webhook | None = None


class PointInTime(BaseModel):
    as_of: datetime | None = Field(
        description="the moment the export shows: planning and every batch read the source as it was then "
        "(when its snapshot was taken, by PostgreSQL's clock); null until it is taken"
    )
    state: str = Field(
        description="the snapshot: pending (being taken), held, released (the export reads the source no "
        "more), lost (its holding session ended before every batch had read: the export fails rather than "
        "mix two moments) or unavailable (it could not be taken)"
    )


class Links(BaseModel):
    self: str
    logs: str
    cancel: str
    download: str
    notify: str
    airflow: str


class Transaction(BaseModel):
    id: str
    label: str | None = Field(default=None, description="the requester's own name for the export, if given")
    definition: str
    params: dict[str, Any]
    batch_size: int | None = Field(
        None,
        description="rows per batch: the request's, or once planned the size chosen; null: automatic, not yet planned",
    )
    format: str = Field("parquet", description="the file's format: parquet, csv, csv.gz, jsonl or jsonl.gz")
    retention_days: int | None = Field(
        None, description="days the file is kept, if the request chose; else the definition's default"
    )
    state: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    result: Result | None
    error: str | None
    point_in_time: PointInTime | None = Field(
        default=None,
        description="a point-in-time export (its definition sets consistent_snapshot): the moment it reads "
        "the source as of; null: each batch reads the source as it is when the batch runs",
    )
    notification: Notification
    downloaded_at: datetime | None
    cancelled_by: str | None
    links: Links


class TransactionList(BaseModel):
    transactions: list[Transaction]
    total_entries: int


class LogEvent(BaseModel):
    id: int
    at: datetime
    kind: str
    message: str
    data: dict[str, Any] | None


class LogPage(BaseModel):
    events: list[LogEvent]
    next_after: int | None = Field(description="pass as ?after= to get the next page; null at the end")


class FieldErrorModel(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[FieldErrorModel] = []


def percent(header: Header) -> int:
    if header.state.value in ("SUCCEEDED", "EXPIRED"):
        return 100
    if not header.rows_planned:
        return 0
    # The merge is the last step: batches alone never show 100 %.
    return min(99, int(99 * header.rows_written / header.rows_planned))


def links(tx_id: str) -> Links:
    base = f"{PREFIX}/transactions/{quote(tx_id, safe='')}"
    return Links(
        self=base,
        logs=f"{base}/logs",
        cancel=f"{base}/cancel",
        download=f"{base}/download",
        notify=f"{base}/notify",
        airflow=f"/dags/{DAG_ID}/runs/{quote(tx_id, safe='')}",
    )


def transaction(header: Header, *, admin: bool = False) -> Transaction:
    """The status record. Requesters get download links; storage locations (server paths, bucket
    and connection names) are shown to admins only."""
    result = None
    if header.state.value == "SUCCEEDED" and header.result_uri:
        result = Result(
            uri=links(header.id).download,
            storage_uri=header.result_uri if admin else None,
            rows=header.result_rows or 0,
            bytes=header.result_bytes or 0,
            sha256=header.result_sha256 or "",
            expires_at=header.expires_at,
        )
    return Transaction(
        id=header.id,
        label=header.label,
        definition=header.definition,
        params=header.params,
        batch_size=header.batch_size or None,  # None: automatic, until planned
        format=header.format,
        retention_days=header.retention_days,
        state=header.state.value,
        requested_by=header.requested_by,
        created_at=header.created_at,
        updated_at=header.updated_at,
        started_at=header.started_at,
        finished_at=header.finished_at,
        progress=Progress(
            batches_total=header.batches_total,
            batches_done=header.batches_done,
            rows_written=header.rows_written,
            percent=percent(header),
        ),
        result=result,
        error=header.error,
        point_in_time=None
        if header.snapshot_state is None
        else PointInTime(as_of=header.snapshot_at, state=header.snapshot_state),
        notification=Notification(
            email=header.notify_email,
            state=header.notification_state,
            sent_at=header.notification_sent_at,
            # The URL may hold the receiver's token: like the e-mail, only the owner and admins
            # ever see a status record.
            webhook=Webhook(
                url=header.webhook_url,
                state=header.webhook_state,
                delivered_at=header.webhook_delivered_at,
                attempts=header.webhook_attempts,
            ),
        ),
        downloaded_at=header.downloaded_at,
        cancelled_by=header.cancelled_by,
        links=links(header.id),
    )


def log_event(event: Event) -> LogEvent:
    return LogEvent(id=event.id, at=event.at, kind=event.kind, message=event.message, data=event.data)
