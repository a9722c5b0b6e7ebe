"""The steps of one export transaction, as plain functions the DAG's tasks call.

begin → plan → export each batch (mapped) → merge → (notify). Each step is safe to run
twice: the header moves by compare-and-set, the plan is stored once, parts have fixed names,
batch rows are recorded idempotently, and the result is published by an atomic rename only
after its row count matched the batches'.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from export_tx import formats, memory, snapshots, storage
from export_tx.catalog import registry
from export_tx.columns.conversions import processed
from export_tx.config import BULK_RUN_PREFIX, DAG_ID, get_settings, snapshot_wait_seconds
from export_tx.errors import FieldError, IllegalTransition, IntegrityError, RequestInvalid, TransactionClosed
from export_tx.planning import SchemaPlan, batch_sql, plan_export
from export_tx.request import ExportRequest, parse_request, salvaged_fields
from export_tx.sources import stream
from export_tx.states import BatchState, State
from export_tx.store import Header, HeaderStore, utcnow

log = logging.getLogger(__name__)


def begin(
    store: HeaderStore,
    tx_id: str,
    conf: dict[str, Any],
    requested_by: str,
    dag_id: str = DAG_ID,
    triggered_by: str | None = None,
) -> Header:
    """Validate the request and move the header to RUNNING, creating it if no API did.

    An invalid request leaves a FAILED header naming each bad field, and raises
    :class:`RequestInvalid` (the caller must not retry it). So does a run started by hand with
    an id reserved for scheduled bulk exports (their own DAG triggers them through an operator).
    """
    try:
        if tx_id.startswith(BULK_RUN_PREFIX) and triggered_by != "operator":
            reserved = f"run ids starting with {BULK_RUN_PREFIX} are reserved for scheduled bulk exports"
            raise RequestInvalid([FieldError("dag_run_id", reserved)])
        request: ExportRequest | None = parse_request(conf)
    except RequestInvalid as exc:
        request, invalid = None, exc
    if request is not None:
        fields = request.as_conf()
    else:
        fields = salvaged_fields(conf)
    header, _created = store.create(tx_id, requested_by=requested_by, dag_id=dag_id, **fields)
    if request is None:
        store.fail(tx_id, str(invalid))
        raise invalid
    if header.terminal:
        raise TransactionClosed(f"the transaction is already {header.state.value}")
    store.transition(tx_id, State.RUNNING, f"run started by {requested_by}")
    return store.get(tx_id)


def plan(store: HeaderStore, tx_id: str) -> list[int]:
    """Plan the batches once (a retry gets the stored plan); return their numbers."""
    header = _active(store, tx_id)
    if header.batches_total is not None:
        return [b.batch_no for b in store.plan(tx_id)]
    definition = registry.get(header.definition)
    settings = get_settings()
    requested = header.batch_size or None  # 0: automatic
    # A point-in-time export waits for its snapshot; every count below reads it.
    with snapshots.reading(store, tx_id, definition, wait_seconds=snapshot_wait_seconds()) as held:
        result = plan_export(definition, header.params, requested, settings.max_batches, settings.batch_slots)
    # Before any row is read: a column the format cannot hold exactly is refused, named.
    formats.get(header.format).check(result.schema.output_schema())
    note = result.note
    data: dict[str, Any] = {"columns": result.schema.describe()}
    if held is not None and held.snapshot_at is not None:
        note += f"; point-in-time: the source as of {snapshots.moment(held.snapshot_at)}"
        data["snapshot_at"] = held.snapshot_at.isoformat()
    if result.schema.notes:
        note += "; columns: " + "; ".join(result.schema.notes)
    stored = store.save_plan(
        tx_id,
        result.batches,
        batch_size=result.batch_size,
        note=note,
        schema_plan=result.schema.as_json(),
        data=data,
    )
    return [b.batch_no for b in stored]


def schema_of(header: Header) -> SchemaPlan:
    """The columns fixed when the transaction was planned."""
    if not header.schema_plan:
        raise IntegrityError(
            "this transaction was planned by an earlier version of export-tx without its column types; "
            "request the export again"
        )
    return SchemaPlan.from_json(header.schema_plan)


@dataclass(frozen=True)
class BatchResult:
    batch_no: int
    rows: int
    bytes: int
    uri: str
    duration_s: float

    def as_xcom(self) -> dict[str, Any]:
        # XCom carries references and counts only.
        return {"batch_no": self.batch_no, "rows": self.rows, "uri": self.uri}


def batch_label(store: HeaderStore, tx_id: str, batch_no: int) -> str:
    header = store.get(tx_id)
    b = store.batch(tx_id, batch_no)
    key = registry.get(header.definition).key_column
    upper = "" if b.hi is None else f" below {b.hi}"
    # Never a bare number: Airflow crashes on a map index label that renders to one.
    return f"batch-{batch_no:05d} of {header.batches_total} ({key} from {b.lo}{upper})"


def export_batch(store: HeaderStore, tx_id: str, batch_no: int) -> BatchResult:
    """Stream one batch's rows from the source into its part (in the header's format) and record its rows."""
    done = _already_published(store, tx_id, batch_no)
    if done is not None:
        return done
    header = _active(store, tx_id)
    definition = registry.get(header.definition)
    columns = schema_of(header)
    b = store.batch(tx_id, batch_no)
    attempt = store.start_batch(tx_id, batch_no)
    started = time.monotonic()
    values = {**definition.bind_values(header.params), "export_tx_lo": b.lo}
    if b.hi is not None:
        values["export_tx_hi"] = b.hi
    fmt = formats.get(header.format)
    target = storage.part_path(tx_id, batch_no, fmt.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    sql = batch_sql(definition, columns, b.hi is not None)
    with snapshots.reading(store, tx_id, definition), stream(definition.source, sql, values, columns.binding) as reader:
        schema, batches = processed(definition, columns, reader)
        # A fixed name: a retry overwrites the part of an earlier attempt, never adds one.
        with target.open("wb") as raw:
            sink = storage.HashingWriter(raw)
            rows = fmt.write_part(sink, schema, batches)
            sink.close()
    duration = time.monotonic() - started
    recorded = store.record_batch(
        tx_id,
        batch_no,
        rows=rows,
        nbytes=sink.bytes,
        part_uri=str(target),
        duration_s=duration,
        peak_rss_bytes=memory.peak_rss(),
    )
    if recorded is None:
        # Cancelled while this batch ran: its part would outlive the cleanup.
        storage.remove(target)
        raise TransactionClosed("the transaction ended while this batch ran; its part was removed")
    log.info("batch %s attempt %s: %s rows, %s bytes in %.2f s", batch_no, attempt, rows, sink.bytes, duration)
    if recorded:
        merge_if_last(store, tx_id)
    return BatchResult(batch_no, rows, sink.bytes, str(target), duration)


def _already_published(store: HeaderStore, tx_id: str, batch_no: int) -> BatchResult | None:
    """A retry of a batch whose rows are already in the published file (its task died after the
    last batch's merge): nothing to do, the recorded result stands."""
    header = store.get(tx_id)
    if header.state != State.SUCCEEDED:
        return None
    b = store.batch(tx_id, batch_no)
    if b.state != BatchState.DONE:
        return None
    return BatchResult(batch_no, b.rows or 0, b.bytes or 0, b.part_uri or "", b.duration_s or 0.0)


def merge_if_last(store: HeaderStore, tx_id: str) -> None:
    """The batch that finishes last merges at once, in its own process: the export is ``SUCCEEDED``
    without waiting for the scheduler to start the merge task (which then finds the file
    published). Only the batch whose compare-and-set moves the header to ``MERGING`` does it, so
    two batches ending together never both merge. Whatever goes wrong here is left to the merge
    task, which merges again from the parts (they are removed only once the file is published)."""
    header = store.get(tx_id)
    if header.terminal or header.batches_total is None or header.batches_done != header.batches_total:
        return
    try:
        if store.transition(tx_id, State.MERGING, "merging the parts (by the last batch to finish)"):
            merge(store, tx_id)
    except Exception:
        log.warning("the merge is left to the merge task", exc_info=True)


@dataclass(frozen=True)
class MergeResult:
    uri: str
    rows: int
    bytes: int
    sha256: str

    def as_xcom(self) -> dict[str, Any]:
        return {"uri": self.uri, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


def merge(store: HeaderStore, tx_id: str) -> MergeResult:
    """Merge the parts in batch order into the result; publish it only if every row is there."""
    header = store.get(tx_id)
    if header.state == State.SUCCEEDED and header.result_uri:
        # Already published by an earlier attempt of this task.
        return MergeResult(
            header.result_uri, header.result_rows or 0, header.result_bytes or 0, header.result_sha256 or ""
        )
    _active(store, tx_id)
    store.transition(tx_id, State.MERGING, "merging the parts")
    definition = registry.get(header.definition)
    plan = store.plan(tx_id)
    missing = [b.batch_no for b in plan if b.state != BatchState.DONE]
    if missing:
        raise IntegrityError(f"batches {missing} have not finished; nothing was published")
    expected = sum(b.rows or 0 for b in plan)
    columns = schema_of(header)
    # The plan's schema, whatever the parts hold: a zero-row result is as fully typed as any.
    schema = columns.output_schema()

    fmt = formats.get(header.format)
    tmp = storage.temp_result_path(tx_id, definition.name, fmt.suffix)
    final = storage.result_path(tx_id, definition.name, fmt.suffix)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # In the last batch's process the batch's row-group buffers are still held by the allocator:
    # give them back, and count the merge's own peak from here.
    memory.release()
    measured = memory.reset_peak()
    started = time.monotonic()
    with tmp.open("wb") as raw:
        sink = storage.HashingWriter(raw)
        parts = (_open_part(tx_id, b.batch_no, fmt.suffix) for b in plan)
        written = fmt.merge_parts(sink, schema, parts)
        sink.close()
    with tmp.open("rb") as check:
        file_rows = fmt.count_rows(check)
    if written != expected or file_rows != expected:
        storage.remove(tmp)
        raise IntegrityError(
            f"the merged file holds {file_rows:,} rows but the batches recorded {expected:,}; nothing was published"
        )
    storage.publish(tmp, final)
    finished = utcnow()
    peak = memory.peak_rss() if measured else None
    try:
        store.transition(
            tx_id,
            State.SUCCEEDED,
            f"{expected:,} rows, {sink.bytes:,} bytes published in {time.monotonic() - started:.2f} s",
            data={"rows": expected, "bytes": sink.bytes, "sha256": sink.sha256, "peak_rss_bytes": peak},
            result_uri=str(final),
            result_rows=expected,
            result_bytes=sink.bytes,
            result_sha256=sink.sha256,
            result_schema=columns.describe(),
            expires_at=finished + timedelta(days=header.retention_days or definition.retention_days),
        )
    except IllegalTransition as exc:
        # Cancelled during the merge: the file must not outlive the transaction.
        storage.remove(final)
        storage.remove_tree(storage.parts_dir(tx_id))
        raise TransactionClosed(f"the transaction ended during the merge ({exc}); the file was removed") from exc
    if storage.remove_tree(storage.parts_dir(tx_id)):
        store.add_event(tx_id, "cleanup", f"removed {len(plan)} parts")
    return MergeResult(str(final), expected, sink.bytes, sink.sha256)


def _open_part(tx_id: str, batch_no: int, suffix: str) -> Any:
    path = storage.part_path(tx_id, batch_no, suffix)
    if not path.exists():
        raise IntegrityError(f"the part of batch {batch_no} is missing from storage; nothing was published")
    return path.open("rb")


PREVIEW_ROWS_MAX = 100
PREVIEW_RANGES_SHOWN = 20
PREVIEW_TIME_LIMIT_SECONDS = 60.0


def preview(definition: Any, params: dict[str, Any], batch_size: int | None, rows: int) -> dict[str, Any]:
    """Try an export without writing anything: its row count, batch plan, columns (source type →
    file type) and first rows, exactly as the file would hold them (transform applied).

    Raises what planning raises (each naming the field or column) before anything is read twice.
    """
    from export_tx.sources import time_limit

    started = time.monotonic()
    with time_limit(PREVIEW_TIME_LIMIT_SECONDS):
        settings = get_settings()
        result = plan_export(definition, params, batch_size, settings.max_batches, settings.batch_slots)
        sample: list[dict[str, Any]] = []
        if rows > 0 and result.batches:
            first = result.batches[0]
            values = {**definition.bind_values(params), "export_tx_lo": first.lo, "export_tx_limit": rows}
            sql = batch_sql(definition, result.schema, False, limit=True)
            with stream(definition.source, sql, values, result.schema.binding) as reader:
                _, batches = processed(definition, result.schema, reader)
                taken = 0
                for batch in batches:
                    part = batch.slice(0, rows - taken)
                    sample.extend(_jsonable_rows(part))
                    taken += part.num_rows
                    if taken >= rows:
                        break
    return {
        "definition": definition.name,
        "params": params,
        "rows": result.total_rows,
        "plan": {
            "batch_size": result.batch_size,
            "batches": len(result.batches),
            "note": result.note,
            "ranges": [
                {"batch_no": b.batch_no, "from": b.lo, "below": b.hi, "rows": b.planned_rows}
                for b in result.batches[:PREVIEW_RANGES_SHOWN]
            ],
        },
        "columns": result.schema.describe(),
        "notes": list(result.schema.notes),
        "sample": sample,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


_SHOWN_CHARS = 200


def _jsonable_rows(batch: Any) -> list[dict[str, Any]]:
    """Rows for people to read: exact numbers as text, times as ISO text, bytes as hex, long
    values cut (a preview, not the file)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    columns: dict[str, list[Any]] = {}
    for field, column in zip(batch.schema, batch.columns, strict=True):
        t = field.type
        if pt.is_decimal(t) or pt.is_temporal(t):
            values = pc.cast(column, pa.string()).to_pylist()  # exact, and BC or year 99999 too
        else:
            values = [_jsonable(v) for v in column.to_pylist()]
        columns[field.name] = values
    return [{name: columns[name][i] for name in columns} for i in range(batch.num_rows)]


def _jsonable(value: Any) -> Any:
    import math
    import uuid

    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + f"… ({len(value):,} characters)"
    if isinstance(value, bytes):
        shown = "\\x" + value[: _SHOWN_CHARS // 2].hex()
        return shown if len(value) <= _SHOWN_CHARS // 2 else shown + f"… ({len(value):,} bytes)"
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    message: str


def finalize(store: HeaderStore, tx_id: str) -> Outcome:
    """Close the transaction once every task is done: a run that did not reach SUCCEEDED ends
    FAILED with the last recorded error; its parts and any temporary file are removed.

    Nothing is published here: the result only ever appears by the merge's final rename.
    """
    header = store.find(tx_id)
    if header is None:
        return Outcome(
            False,
            "the export failed before its transaction header was created; "
            "the Airflow task log of begin_transaction has the details",
        )
    if header.state == State.SUCCEEDED:
        return Outcome(True, "succeeded")
    if header.state == State.CANCELLED:
        # Normally the run was already marked failed by whoever cancelled; if not, it ends failed here.
        return Outcome(False, f"the export was cancelled by {header.cancelled_by or 'someone'}")
    last = store.last_event(tx_id, "error")
    message = (
        last.message if last is not None else ("a step of the export failed; the Airflow task log has the details")
    )
    store.fail(tx_id, message)
    final = store.get(tx_id)
    if final.state != State.SUCCEEDED:
        from export_tx.control import remove_files, remove_unfinished_parts

        # A temporary file, and a result a merge published before the store could say so. A FAILED
        # transaction keeps its finished batches' parts: POST …/retry re-runs only the others.
        resumable = final.state == State.FAILED
        removed = remove_files(final, keep_parts=resumable)
        if resumable:
            removed = remove_unfinished_parts(store, final) or removed
        if removed:
            kept = " but the finished batches' parts (kept for POST …/retry)" if resumable else ""
            store.add_event(tx_id, "cleanup", f"removed the files of the unfinished export{kept}")
    if final.state == State.FAILED:
        from export_tx.notifications.email import send_failure_email
        from export_tx.notifications.webhook import deliver_failure_event

        # Both at once, from this run (neither raises): a failed export has no notification run.
        send_failure_email(store, final)
        deliver_failure_event(store, final)
    return Outcome(False, final.error or f"the export ended {final.state.value}")


def _active(store: HeaderStore, tx_id: str) -> Header:
    header = store.get(tx_id)
    if header.terminal:
        raise TransactionClosed(f"the transaction is {header.state.value}; no further work is done")
    return header
