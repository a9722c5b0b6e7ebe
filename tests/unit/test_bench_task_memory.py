"""The benchmark's reading of a task's memory: the merge's figure is its own, never the batch's."""

from __future__ import annotations

from bench.probe import TaskProcess
from bench.task_memory import MergeWindow, batch_figure, marks_after_reset, merge_figure

MB = 1024 * 1024


def _proc(samples: list[tuple[float, int]]) -> TaskProcess:
    """Samples of (time, high-water mark in MB); RSS taken equal to the mark."""
    return TaskProcess(1, "ti", [(t, hwm * MB, hwm * MB) for t, hwm in samples])


def test_marks_read_before_the_reset_belong_to_the_batch() -> None:
    # The batch peaks at 500 MB just before the merge starts (t=10); the probe reads 500 once
    # more inside the window, before the merge resets the mark; then 210 and 230 after it.
    # A reading may dip by less than a MB without any reset (the kernel's lazy RSS counters).
    proc = _proc([(8.0, 480), (9.9, 500), (9.95, 499), (10.05, 500), (10.2, 210), (10.3, 230), (11.0, 235)])
    window = MergeWindow(10.0, 10.35, by_batch_no=1, reported_peak=228 * MB)
    assert marks_after_reset(proc, window) == [210 * MB, 230 * MB]
    figure, how = merge_figure(proc, window, whole=False)
    assert figure == 230 * MB  # the probe saw more than the product reported: the larger counts
    assert "2 mark(s) after the reset" in how
    assert batch_figure(proc, 495 * MB, merged_from=window.start) == 500 * MB


def test_without_the_products_figure_the_batch_mark_bounds_the_merge() -> None:
    proc = _proc([(8.0, 480), (9.9, 500), (10.2, 500)])
    figure, how = merge_figure(proc, MergeWindow(10.0, 10.3, by_batch_no=1), whole=False)
    assert figure == 500 * MB and how.startswith("at most")


def test_a_merge_task_counts_every_mark() -> None:
    proc = _proc([(10.0, 170), (10.1, 190)])
    figure, _ = merge_figure(proc, MergeWindow(10.0, 10.2, by_batch_no=None, reported_peak=185 * MB), whole=True)
    assert figure == 190 * MB
