"""The transaction resource as clients see it (design doc: REST contract)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from export_tx import estimates
from export_tx.config import DAG_ID
from export_tx.estimates import Estimate, QueuePlace
from export_tx.states import State
from export_tx.store import Batch, Event, Header, HeaderStore, utcnow

PREFIX = "/exports/v1"


class Progress(BaseModel):
    batches_total: int | None
    batches_done: int
    rows_written: int
    percent: int


class KeyRange(BaseModel):
    batch_no: int
    from_: Any = Field(alias="from", description="the first key (inclusive)")
    below: Any = Field(description="the key the range ends below (exclusive); null: no upper end")
    rows: int

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class Queue(BaseModel):
    """Where a ``REQUESTED`` transaction stands in the line of exports waiting to start."""

    position: int = Field(
        description="1: the next to start. The order of requests among everyone's REQUESTED exports (the same "
        "instant: by token); Airflow starts waiting runs in that order, tasks waiting for an executor slot by priority"
    )
    ahead: int = Field(description="REQUESTED exports requested before this one (position - 1); a count only")
    waiting: int = Field(description="REQUESTED exports in all, this one included; a count only")


class Eta(BaseModel):
    """When a ``RUNNING`` transaction's batches should be done (the merge follows, usually in seconds)."""

    estimated_finish_at: datetime = Field(description="when the last batch should be done (UTC)")
    seconds_left: float = Field(
        description="seconds from this answer to estimated_finish_at, 0 when it is due; at most a year"
    )
    basis: Literal["this_run", "history"] = Field(
        description="this_run: the throughput of this run's finished batches (rows written / time from the first "
        "batch's start to the latest batch's end), assuming the rest goes the same; history: before a batch has "
        "finished, the rows-weighted median throughput of the definition's last 20 succeeded exports"
    )
    rows_per_second: float = Field(description="the throughput the estimate uses")
    rows_left: int = Field(description="rows planned less rows written, never below 0")


class Result(BaseModel):
    uri: str = Field(description="where to download the file (this API's download link)")
    storage_uri: str | None = Field(None, description="where the file is stored; shown to admins only")
    rows: int
    bytes: int
    sha256: str
    expires_at: datetime | None
    partial: bool = Field(
        default=False,
        description="true: a cancelled transaction's partial file (keep_partial), holding only the batches "
        "that had finished, in the key ranges listed in ranges",
    )
    ranges: list[KeyRange] | None = Field(default=None, description="a partial file's key ranges, in key order")


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
    retry: str
    batches: str
    airflow: str


class Duplicate(BaseModel):
    of: str = Field(description="the transaction this request duplicates: the one answered")
    state: str = Field(description="that transaction's state when the request came")
    matched: list[str] = Field(default=["definition", "params", "format"],
                               description="what the two requests have in common")  # fmt: skip
    hint: str = 'send "force": true to start a new export anyway'


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
    resumes: int = Field(default=0, description="times this transaction was resumed after failing (POST …/retry)")
    links: Links
    duplicate: Duplicate | None = Field(
        default=None,
        description="only in the answer to a POST that asked for an export you already have running or "
        "downloadable (same definition, params and format): that transaction, answered instead of a new one",
    )
    queue: Queue | None = Field(
        None, description="REQUESTED: its place in the line of exports waiting to start; otherwise null"
    )
    eta: Eta | None = Field(
        None,
        description="RUNNING: when its batches should be done; null in any other state, before planning, and "
        "before a first batch has finished when the definition has no succeeded export to learn from",
    )


class BatchRecord(BaseModel):
    batch_no: int
    from_: Any = Field(alias="from", description="the first key (inclusive)")
    below: Any = Field(description="the key the batch ends below (exclusive); null: no upper end")
    planned_rows: int
    state: str = Field(description="PLANNED until its part is written and its rows recorded, then DONE")
    rows: int | None
    attempts: int = Field(description="tries at this batch so far, across every resume")
    duration_s: float | None
    done_at: datetime | None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class BatchPage(BaseModel):
    batches: list[BatchRecord]
    total: int | None = Field(description="batches in the plan; null: not planned yet")
    next_after: int | None = Field(description="pass as ?after= to get the next page; null at the end")


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
        retry=f"{base}/retry",
        batches=f"{base}/batches",
        airflow=f"/dags/{DAG_ID}/runs/{quote(tx_id, safe='')}",
    )


def statuses(store: HeaderStore, found: Sequence[Header], *, admin: bool = False) -> list[Transaction]:
    """Status records with where each stands now (:mod:`export_tx.estimates`): one query for the
    places of those ``REQUESTED`` (none when none is), and for those ``RUNNING`` arithmetic on the
    header — before a first batch has finished, with the definition's history figure, kept by
    the process for a minute."""
    places = store.queue_places([h.id for h in found if h.state == State.REQUESTED])
    now = utcnow()
    records = []
    for header in found:
        eta = None
        if header.state == State.RUNNING:
            figure = estimates.history.rate(store, header.definition) if estimates.needs_history(header) else None
            eta = estimates.estimate_for(header, now, figure)
        records.append(transaction(header, admin=admin, queue=places.get(header.id), eta=eta))
    return records


def status(store: HeaderStore, header: Header, *, admin: bool = False) -> Transaction:
    """The status record of ``GET /transactions/{id}``: :func:`statuses` of one."""
    return statuses(store, [header], admin=admin)[0]


def _queue(place: QueuePlace | None) -> Queue | None:
    return None if place is None else Queue(position=place.position, ahead=place.ahead, waiting=place.waiting)


def _eta(found: Estimate | None) -> Eta | None:
    if found is None:
        return None
    # rows_per_second unrounded: a crawling run's is tiny, never 0 (a client divides by it).
    return Eta(estimated_finish_at=found.finish_at, seconds_left=round(found.seconds_left, 1),
               basis=found.basis.value, rows_per_second=found.rows_per_second, rows_left=found.rows_left)  # fmt: skip


def transaction(
    header: Header, *, admin: bool = False, queue: QueuePlace | None = None, eta: Estimate | None = None
) -> Transaction:
    """The status record. Requesters get download links; storage locations (server paths, bucket
    and connection names) are shown to admins only. ``queue`` and ``eta``: see :func:`statuses`."""
    result = None
    partial = header.state.value == "CANCELLED" and header.result_partial
    if (header.state.value == "SUCCEEDED" or partial) and header.result_uri:
        result = Result(
            uri=links(header.id).download,
            storage_uri=header.result_uri if admin else None,
            rows=header.result_rows or 0,
            bytes=header.result_bytes or 0,
            sha256=header.result_sha256 or "",
            expires_at=header.expires_at,
            partial=partial,
            ranges=[KeyRange.model_validate(r) for r in header.result_ranges or []] if partial else None,
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
        resumes=header.resumes,
        links=links(header.id),
        queue=_queue(queue) if header.state == State.REQUESTED else None,
        eta=_eta(eta) if header.state == State.RUNNING else None,
    )


def batch(b: Batch) -> BatchRecord:
    record = {"batch_no": b.batch_no, "from": b.lo, "below": b.hi, "planned_rows": b.planned_rows, "state": b.state,
              "rows": b.rows, "attempts": b.attempts, "duration_s": b.duration_s, "done_at": b.done_at}  # fmt: skip
    return BatchRecord.model_validate(record)


def log_event(event: Event) -> LogEvent:
    return LogEvent(id=event.id, at=event.at, kind=event.kind, message=event.message, data=event.data)
