"""Operations on a transaction from outside its run: cancel, record a download, close after
Airflow ended the run. Used by the ``/exports`` API and the Airflow listener."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from export_tx import formats, storage
from export_tx.states import NotificationState, State, WebhookState
from export_tx.store import Header, HeaderStore, utcnow

log = logging.getLogger(__name__)


def remove_files(header: Header, *, keep_parts: bool = False) -> bool:
    """Remove what storage holds of an ended transaction: its parts and temporary file — and, when
    it did not succeed, its result too (a merge may have published it just before the end). A
    cancelled transaction's partial file stays (until its retention ends); with ``keep_parts`` (a
    FAILED transaction, resumable) the parts stay too. True when something was removed."""
    tmp = storage.temp_result_path(header.id, header.definition, _suffix(header))
    removed = False
    if tmp.exists():
        storage.remove(tmp)
        removed = True
    if header.state == State.SUCCEEDED:
        return storage.remove_tree(storage.parts_dir(header.id)) or removed
    removed = storage.remove_tree(storage.result_path(header.id, header.definition, _suffix(header)).parent) or removed
    if not keep_parts:
        removed = storage.remove_tree(storage.parts_dir(header.id)) or removed
    if not (header.result_partial and header.result_uri):
        removed = storage.remove_tree(storage.partial_dir(header.id)) or removed
    if not keep_parts and not (header.result_partial and header.result_uri):
        storage.remove_tree(storage.tx_root(header.id))  # the emptied folder
    return removed


def remove_unfinished_parts(store: HeaderStore, header: Header) -> bool:
    """A FAILED transaction keeps the parts of its finished batches (a resume re-runs the others):
    anything else in its parts folder — a part an unfinished batch left half-written — goes. True
    when something was removed."""
    from export_tx.states import BatchState

    folder = storage.parts_dir(header.id)
    if not folder.exists():
        return False
    suffix = _suffix(header)
    kept = {storage.part_path(header.id, b.batch_no, suffix).name for b in store.plan(header.id)
            if b.state == BatchState.DONE}  # fmt: skip
    removed = False
    for path in list(folder.iterdir()):
        if path.name not in kept:
            storage.remove(path)
            removed = True
    if not kept:
        storage.remove_tree(folder)
        storage.remove_tree(storage.tx_root(header.id))
    return removed


def _suffix(header: Header) -> str:
    """The file suffix of the header's format (a format this version does not know: Parquet's,
    the only one before formats could be chosen)."""
    known = formats.FORMATS.get(header.format or formats.DEFAULT)
    return (known or formats.get()).suffix


def cleanup(store: HeaderStore, header: Header, why: str, *, keep_parts: bool = False) -> None:
    """Remove the files of an ended transaction (:func:`remove_files`; with ``keep_parts``, all but
    its finished batches' parts) and say so in its log."""
    removed = remove_files(header, keep_parts=keep_parts)
    if keep_parts:
        removed = remove_unfinished_parts(store, header) or removed
    if removed:
        what = "parts" if header.state == State.SUCCEEDED else "files"
        if keep_parts:
            what += " but the finished batches' parts (kept for POST …/retry)"
        store.add_event(header.id, "cleanup", f"removed its {what} ({why})")


def cancel(
    store: HeaderStore, tx_id: str, actor: str, stop_run: Callable[[str], object], *, keep_partial: bool = False
) -> bool:
    """CANCELLED, then stop the Airflow run, then (``keep_partial``) merge the finished batches
    into a partial file, then clean up. False if it had already ended."""
    header = store.get(tx_id)
    extra: dict[str, Any] = (
        {"notification_state": NotificationState.SKIPPED}
        if header.notification_state == NotificationState.PENDING
        else {}
    )
    if not store.fail(tx_id, f"cancelled by {actor}", state=State.CANCELLED, cancelled_by=actor, **extra):
        return False
    try:
        stop_run(tx_id)
    except Exception as exc:  # the header is the source of truth; tasks check it and stop themselves
        log.exception("could not stop the Airflow run %s", tx_id)
        store.add_event(tx_id, "info", f"the Airflow run could not be stopped at once ({type(exc).__name__}); "
                        "its remaining tasks stop on their own and the run ends failed")  # fmt: skip
    if keep_partial:
        keep_partial_file(store, tx_id)
    cleanup(store, store.get(tx_id), "cancelled")
    return True


def keep_partial_file(store: HeaderStore, tx_id: str) -> bool:
    """Merge the parts of the batches that finished before the cancel, in key order, into the
    transaction's partial file (its format, the plan's columns), and record it as the result with
    the key ranges it covers; downloadable until its retention ends. Batches finishing after the
    cancel are not recorded (their parts are removed), so the file holds exactly the batches
    recorded done. True when a file was kept; the log says why not otherwise."""
    from datetime import timedelta

    from export_tx.catalog import registry
    from export_tx.errors import IntegrityError
    from export_tx.pipeline import schema_of
    from export_tx.states import BatchState

    header = store.get(tx_id)
    finished = [b for b in store.plan(tx_id) if b.state == BatchState.DONE]
    if not finished or not header.schema_plan:
        store.add_event(tx_id, "partial", "no partial file: no batch had finished")
        return False
    fmt = formats.get(header.format)
    definition = registry.get(header.definition)
    target = storage.partial_path(tx_id, header.definition, fmt.suffix)
    tmp = target.parent / f".{target.name}.tmp"
    expected = sum(b.rows or 0 for b in finished)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        schema = schema_of(header).output_schema()
        with tmp.open("wb") as raw:
            sink = storage.HashingWriter(raw)
            parts = (storage.part_path(tx_id, b.batch_no, fmt.suffix).open("rb") for b in finished)
            written = fmt.merge_parts(sink, schema, parts)
            sink.close()
        with tmp.open("rb") as check:
            file_rows = fmt.count_rows(check)
        if written != expected or file_rows != expected:
            raise IntegrityError(f"the partial file holds {file_rows:,} rows, the finished batches {expected:,}")
        storage.publish(tmp, target)
    except Exception as exc:  # the cancel stands; only the partial file is given up
        log.exception("no partial file for %s", tx_id)
        storage.remove(tmp)
        store.add_event(tx_id, "partial", f"no partial file: merging the finished batches failed "
                        f"({type(exc).__name__}); the cancel stands")  # fmt: skip
        return False
    key = definition.key_column
    ranges = [{"batch_no": b.batch_no, "from": b.lo, "below": b.hi, "rows": b.rows or 0} for b in finished]
    retention = header.retention_days or definition.retention_days
    store.update(
        tx_id,
        result_uri=str(target),
        result_rows=expected,
        result_bytes=sink.bytes,
        result_sha256=sink.sha256,
        result_schema=schema_of(header).describe(),
        result_partial=True,
        result_ranges=ranges,
        expires_at=utcnow() + timedelta(days=retention),
    )
    shown = ", ".join(str(b.batch_no) for b in finished)
    store.add_event(tx_id, "partial", f"kept a partial file of {len(finished)} of {header.batches_total} batches "
                    f"({shown}): {expected:,} rows, {key} in {len(ranges)} range(s)",
                    {"rows": expected, "bytes": sink.bytes, "sha256": sink.sha256, "ranges": ranges})  # fmt: skip
    return True


class NotResumable(Exception):
    """POST …/retry refused: the message says why (the state, a changed definition or source)."""


@dataclass(frozen=True)
class Resumed:
    rerun: list[int]
    kept: list[int]
    planned: bool


def resume(store: HeaderStore, tx_id: str, actor: str, resume_run: Callable[[str, list[int]], object]) -> Resumed:
    """Resume a FAILED transaction in the same Airflow run: the batches that did not finish run
    again, then the merge. Refused (:class:`NotResumable`) unless the state machine allows it and
    the request, the definition and its source's columns are as they were when it was planned. A
    finished batch whose part is gone (removed after ``EXPORT_TX_RESUME_KEEP_DAYS``) runs again."""
    from export_tx.catalog import registry
    from export_tx.errors import DefinitionInvalid, RequestInvalid
    from export_tx.planning import SchemaPlan, shape_changes
    from export_tx.request import parse_request
    from export_tx.states import RESUMABLE, BatchState

    header = store.get(tx_id)
    if header.state not in RESUMABLE:
        allowed = ", ".join(sorted(s.value for s in RESUMABLE))
        raise NotResumable(f"the transaction is {header.state.value}; only a {allowed} one can be resumed")
    conf = {"definition": header.definition, "params": header.params, "batch_size": header.batch_size or None,
            "format": header.format}  # fmt: skip
    try:
        parse_request(conf)
    except RequestInvalid as exc:
        raise NotResumable(f"its request is not valid (any more): {exc}; request the export again") from exc
    definition = registry.get(header.definition)
    if definition.consistent_snapshot or header.snapshot_state is not None:
        # Its finished batches read a snapshot that ended with the run: others would read another moment.
        raise NotResumable("it is a point-in-time export (consistent_snapshot) and the snapshot its finished "
                           "batches read is gone; request the export again")  # fmt: skip
    reason = definition.source.unavailable()
    if reason is not None:
        raise NotResumable(f"its source cannot be read in this deployment: {reason}")
    if header.schema_plan:
        try:
            changes = shape_changes(definition, header.params, SchemaPlan.from_json(header.schema_plan))
        except DefinitionInvalid as exc:  # the query itself no longer runs there (a column dropped)
            changes = [str(exc)]
        if changes:
            why = "; ".join(changes)
            raise NotResumable(f"the definition or its source changed since it was planned: {why}; its finished "
                               "batches would not match the others, request the export again")  # fmt: skip
    fmt = formats.get(header.format)
    plan = store.plan(tx_id)
    gone = [b.batch_no for b in plan if b.state == BatchState.DONE
            and not storage.part_path(tx_id, b.batch_no, fmt.suffix).exists()]  # fmt: skip
    store.reset_batches(tx_id, gone)
    kept = [b.batch_no for b in plan if b.state == BatchState.DONE and b.batch_no not in gone]
    rerun = [b.batch_no for b in plan if b.batch_no not in kept]
    note = (f"{len(rerun)} batch(es) to run again ({', '.join(map(str, rerun)) or 'none'}), {len(kept)} kept"
            if plan else "not planned yet: it is planned again")  # fmt: skip
    if gone:
        note += f"; the parts of {', '.join(map(str, gone))} were gone, so they run again too"
    changed = store.transition(
        tx_id, State.RUNNING, f"resumed by {actor}: {note}",
        data={"resumed_by": actor, "rerun": rerun, "kept": kept, "resume": header.resumes + 1},
        error=None, finished_at=None, resumes=header.resumes + 1,
        notification_state=NotificationState.PENDING if header.notify_email else NotificationState.NOT_REQUESTED,
        notification_sent_at=None,
        webhook_state=WebhookState.PENDING if header.webhook_url else WebhookState.NOT_REQUESTED,
        webhook_delivered_at=None,
        # This run's throughput is measured anew (the time it stood FAILED is not batch time).
        batches_started_at=None, last_batch_at=None,
    )  # fmt: skip
    if not changed:
        raise NotResumable("the transaction is being resumed already")
    try:
        resume_run(tx_id, gone)
    except Exception as exc:
        message = str(exc) if type(exc).__name__ == "RunNotResumable" else (
            f"its Airflow run could not be resumed ({type(exc).__name__}); try again")  # fmt: skip
        store.fail(tx_id, f"{header.error or 'failed'} (not resumed: {message})")
        raise NotResumable(message) from exc
    return Resumed(rerun, kept, bool(plan))


def record_download(store: HeaderStore, tx_id: str, actor: str) -> None:
    header = store.get(tx_id)
    if header.downloaded_at is None:
        store.update(tx_id, downloaded_at=utcnow())
    store.add_event(tx_id, "download", f"downloaded by {actor}")


def close_after_run_failed(store: HeaderStore, tx_id: str, manual: bool, clean: bool = True) -> bool:
    """Airflow ended the run failed while the header was still active.

    Marked failed by hand (UI or REST ``PATCH … {"state": "failed"}``) → CANCELLED; otherwise
    (e.g. a worker lost before the finalizing task ran) → FAILED. With ``clean`` its files are
    removed now; the run listener only records (housekeeping removes the files).
    """
    header = store.find(tx_id)
    if header is None or header.terminal:
        return False
    extra: dict[str, Any] = (
        {"notification_state": NotificationState.SKIPPED}
        if header.notification_state == NotificationState.PENDING
        else {}
    )
    if manual:
        changed = store.fail(tx_id, "cancelled in Airflow: the run was marked failed", state=State.CANCELLED,
                             cancelled_by="airflow", **extra)  # fmt: skip
    else:
        changed = store.fail(tx_id, "the Airflow run ended failed before the export finished; "
                             "the Airflow task logs have the details", **extra)  # fmt: skip
    if changed and clean:
        cleanup(store, store.get(tx_id), "run ended", keep_parts=not manual)
    return changed
