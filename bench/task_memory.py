"""Peak memory per kind of task of the timed export: which process ran which task instance,
which one merged, and what the merge and the batches needed.

The product merges in the batch task that finishes last (``merging the parts (by the last batch
to finish)`` in its log), or else in the ``merge_parts`` task. A batch task that merges holds both
figures in one process. The product reports both from the kernel (``peak_rss_bytes`` in a batch's
event and in the ``SUCCEEDED`` event): a batch's high-water mark (``VmHWM``) when its part is
written, then — after giving the batch's buffers back — a new high-water mark started as the merge
begins and read once the file is published. Each figure is the larger of the product's and this
probe's own reading of the same mark over the same span. Without the product's (a system where
the mark cannot be reset) the samples alone give an upper bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.common import MB
from bench.probe import SAMPLE_SECONDS, TaskProcess

DAG_ID = "export_transaction"
TI_FIELDS = ("dag_id", "dag_run_id", "task_id", "map_index", "try_number")
BATCH_DONE = re.compile(r"batch (\d+) done")


@dataclass(frozen=True)
class MergeWindow:
    """When the merge ran (epoch seconds) and which batch's task ran it (None: the merge task)."""

    start: float
    end: float
    by_batch_no: int | None
    #: The merge's peak RSS as the product measured it (the kernel's mark, reset as it began).
    reported_peak: int | None = None


def merge_window(events: list[Any]) -> MergeWindow | None:
    """From the transaction's processing log (the store's events, in order)."""
    merging = next((e for e in events if e.message.startswith("MERGING")), None)
    done = next((e for e in events if e.message.startswith("SUCCEEDED")), None)
    if merging is None or done is None:
        return None
    by: int | None = None
    if "by the last batch" in merging.message:
        finished = [int(m.group(1)) for e in events if e.at <= merging.at and (m := BATCH_DONE.match(e.message))]
        by = finished[-1] if finished else None
    peak = (done.data or {}).get("peak_rss_bytes")
    return MergeWindow(merging.at.timestamp(), done.at.timestamp(), by, int(peak) if peak else None)


def reported_batch_peaks(events: list[Any]) -> dict[int, int]:
    """Each batch's peak RSS as its task reported it (batch number → bytes), from the log."""
    found: dict[int, int] = {}
    for e in events:
        data = e.data or {}
        if e.kind == "batch" and data.get("peak_rss_bytes") and BATCH_DONE.match(e.message):
            found[int(data["batch_no"])] = int(data["peak_rss_bytes"])
    return found


def task_kind(ti: dict[str, Any], run_id: str) -> str:
    """The task_id for a task of the timed export's run; else what else it was."""
    if not ti:
        return "unknown task instance"
    if ti["dag_id"] == DAG_ID and ti["dag_run_id"] == run_id:
        return str(ti["task_id"])
    return f"{ti['dag_id']}.{ti['task_id']} (another run)"


def merge_figure(proc: TaskProcess, window: MergeWindow, whole: bool) -> tuple[int | None, str]:
    """The merge's peak RSS in ``proc`` and how it was found.

    With the product's figure: the larger of it and the marks this probe read during the merge
    after the reset (seen as a drop of the mark; in the merge task, every mark: the process did
    nothing else). Without it, from the samples alone; in a batch's task whose mark the merge did
    not raise, the merge needed at most that mark: that bound."""
    before = proc.peak_before(window.start)
    marks = [hwm for t, _, hwm in proc.timeline if window.start <= t <= window.end + SAMPLE_SECONDS]
    if window.reported_peak is not None:
        seen = marks if whole else marks_after_reset(proc, window)
        where = "the merge task" if whole else "the last batch's task, its batch's buffers given back first"
        probe = f"; the probe read {len(seen)} mark(s) after the reset, up to {max(seen) / MB:,.1f} MB" if seen else ""
        return max([window.reported_peak, *seen]), f"the kernel's high-water mark over the merge, in {where}{probe}"
    if whole:
        return proc.peak_rss_bytes, "high-water mark of the merge task"
    after = proc.peak_rss_bytes
    if not after:
        return None, "the last batch's task was not sampled"
    if after > before:
        return after, (f"high-water mark of the last batch's task, which its merge raised by "
                       f"{(after - before) / MB:,.1f} MB over its batch's {before / MB:,.1f} MB")  # fmt: skip
    during = proc.rss_between(window.start, window.end + SAMPLE_SECONDS)
    seen_rss = f"; {len(during)} sample(s) during the merge saw up to {max(during) / MB:,.1f} MB" if during else ""
    return before, f"at most: the merge did not raise the last batch's task's high-water mark{seen_rss}"


#: How far two readings of the same high-water mark may differ (seen: a few hundred kB).
MARK_JITTER = 4 * 1024 * 1024


def marks_after_reset(proc: TaskProcess, window: MergeWindow) -> list[int]:
    """The probe's marks of ``proc`` from the merge's reset of the high-water mark to the merge's
    end. The reset shows as the first mark clearly lower than one before it (by more than
    :data:`MARK_JITTER`: the kernel sums per-thread RSS counters lazily, so two readings of an
    unchanged mark can differ by a little); marks read between the merge's start and its reset are
    still the batch's."""
    highest, reset = 0, False
    found = []
    for t, _, hwm in proc.timeline:
        reset = reset or hwm < highest - MARK_JITTER
        highest = max(highest, hwm)
        if reset and window.start <= t <= window.end + SAMPLE_SECONDS:
            found.append(hwm)
    return found


def batch_figure(proc: TaskProcess, reported: int | None, merged_from: float | None) -> int:
    """A batch task's peak RSS: the larger of the product's figure (the kernel's mark as the part
    was written) and the probe's marks of the process before any merge in it."""
    sampled = proc.peak_rss_bytes if merged_from is None else proc.peak_before(merged_from)
    return max(sampled, reported or 0)


def task_memory(
    tasks: dict[int, TaskProcess], tis: dict[str, dict[str, Any]], run_id: str, batch_nos: list[int],
    batch_rows: list[int], window: MergeWindow | None, reported: dict[int, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Peak RSS of each sampled task process, named through the task instance it ran (its title
    holds the instance's id; the REST API maps the id to dag, run, task_id and map_index); the
    merge's and the batches' peaks."""
    merger_index = batch_nos.index(window.by_batch_no) if window and window.by_batch_no in batch_nos else None
    processes: list[dict[str, Any]] = []
    merge: tuple[int | None, str] = (None, "no merge seen")
    for proc in tasks.values():
        ti = tis.get(proc.ti_id) or {}
        kind = task_kind(ti, run_id)
        entry: dict[str, Any] = {"ti_id": proc.ti_id, "peak_rss_bytes": proc.peak_rss_bytes, "kind": kind,
                                 "samples": len(proc.timeline), **{k: ti.get(k) for k in TI_FIELDS}}  # fmt: skip
        if kind == "export_batch" and 0 <= ti["map_index"] < len(batch_rows):
            entry["rows"] = batch_rows[ti["map_index"]]
            merged = window is not None and ti["map_index"] == merger_index
            own = (reported or {}).get(batch_nos[ti["map_index"]])
            entry["batch_peak_rss_bytes"] = batch_figure(proc, own, window.start if window and merged else None)
            if window and merged:
                entry["merged"] = True
                merge = merge_figure(proc, window, whole=False)
        if kind == "merge_parts" and window and window.by_batch_no is None:
            merge = merge_figure(proc, window, whole=True)
        processes.append(entry)
    return {"task_processes": sorted(processes, key=lambda e: (e["kind"], e["map_index"] or 0)),
            **peaks(processes, merge, window)}  # fmt: skip


def peaks(processes: list[dict[str, Any]], merge: tuple[int | None, str], window: MergeWindow | None) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for entry in processes:
        by_kind[entry["kind"]] = max(by_kind.get(entry["kind"], 0), entry["peak_rss_bytes"])
    batch = max((e for e in processes if e.get("rows")), key=lambda e: e["batch_peak_rss_bytes"], default=None)
    floor = by_kind.get("begin_transaction")
    merged_by = None if window is None else "merge_parts" if window.by_batch_no is None else "the last batch's task"
    figures: dict[str, Any] = {
        "task_peak_rss_bytes": by_kind,
        "merge_peak_rss_bytes": merge[0],
        "merge_peak_how": merge[1],
        "merged_by": merged_by,
        "task_floor_rss_bytes": floor,
        "batch_peak_rss_bytes": batch["batch_peak_rss_bytes"] if batch else None,
        "batch_peak_rows": batch["rows"] if batch else None,
        "batch_peak_rss_per_100k_rows_bytes": None,
        "batch_above_floor_per_100k_rows_bytes": None,
    }
    if batch and batch["rows"]:
        per = batch["rows"] / 100_000
        figures["batch_peak_rss_per_100k_rows_bytes"] = round(batch["batch_peak_rss_bytes"] / per)
        if floor:
            figures["batch_above_floor_per_100k_rows_bytes"] = round(
                max(batch["batch_peak_rss_bytes"] - floor, 0) / per
            )
    return figures
