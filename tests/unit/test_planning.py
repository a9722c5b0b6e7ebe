from __future__ import annotations

import pytest

from export_tx.planning import batches_from_histogram, batches_from_starts, choose_batch_size, combine_checks
from export_tx.store import PlannedBatch


@pytest.mark.parametrize(
    ("total", "requested", "max_batches", "expected"),
    [
        (0, 1000, 200, 1000),
        (999, 1000, 200, 1000),
        (200_000, 1000, 200, 1000),  # exactly at the limit
        (200_001, 1000, 200, 1001),  # one row over: grown just enough
        (10_000_000, 1000, 200, 50_000),
        (5_000_000, 250_000, 200, 250_000),
        (1_000_000_000, 250_000, 200, 5_000_000),
    ],
)
def test_choose_batch_size(total: int, requested: int, max_batches: int, expected: int) -> None:
    size = choose_batch_size(total, requested, max_batches)
    assert size == expected
    if total:
        assert -(-total // size) <= max_batches


@pytest.mark.parametrize(
    ("total", "slots", "expected"),
    [
        (0, 2, 1_000),  # nothing to split: the smallest size (the plan is empty anyway)
        (10_000, 2, 10_000),  # small: one batch, no task start-up spent on a split
        (1_999_999, 2, 1_999_999),  # under two batches' worth of the minimum: one batch
        (2_000_000, 2, 1_000_000),  # one batch per slot
        (5_000_000, 2, 2_500_000),
        (5_000_000, 8, 1_000_000),  # more slots than millions: batches stay at least a million rows
        (20_000_000, 2, 5_000_000),  # one per slot would be 10M: capped, the slots take two rounds
        (1_000_000_000, 2, 5_000_000),  # 200 batches, exactly the limit
        (2_000_000_000, 2, 10_000_000),  # beyond it the size grows, as for a requested size
    ],
)
def test_an_automatic_plan_gives_each_slot_one_batch_of_at_least_a_million_rows(
    total: int, slots: int, expected: int
) -> None:
    assert choose_batch_size(total, None, 200, slots) == expected


@pytest.mark.parametrize(
    ("starts", "total", "expected"),
    [
        ([], 0, []),
        ([(7, 1)], 5, [PlannedBatch(1, 7, None, 5)]),
        (
            [(1, 1), (100, 4), (10_000, 7)],
            8,
            [PlannedBatch(1, 1, 100, 3), PlannedBatch(2, 100, 10_000, 3), PlannedBatch(3, 10_000, None, 2)],
        ),
        # A repeated key never straddles two batches: its rows stay in one range.
        (
            [(1, 1), (5, 3), (5, 5), (9, 7)],
            8,
            [PlannedBatch(1, 1, 5, 2), PlannedBatch(2, 5, 9, 4), PlannedBatch(3, 9, None, 2)],
        ),
        # Text keys work the same way.
        ([("a", 1), ("m", 3)], 4, [PlannedBatch(1, "a", "m", 2), PlannedBatch(2, "m", None, 2)]),
    ],
)
def test_batches_from_starts(starts: list[tuple[object, int]], total: int, expected: list[PlannedBatch]) -> None:
    plan = batches_from_starts(starts, total)
    assert plan == expected
    assert sum(b.planned_rows for b in plan) == total
    # Ranges are contiguous and half-open: each batch starts where the previous ended.
    for before, after in zip(plan, plan[1:], strict=False):
        assert before.hi == after.lo


@pytest.mark.parametrize(
    ("buckets", "first", "width", "count", "expected"),
    [
        ([(0, 10)], 5, 100, 1, [PlannedBatch(1, 5, None, 10)]),
        # Even buckets: edges where the rows reach each share.
        ([(0, 5), (1, 5), (2, 5), (3, 5)], 0, 10, 2, [PlannedBatch(1, 0, 20, 10), PlannedBatch(2, 20, None, 10)]),
        # Empty buckets are absent; bounds fall on the edge of the bucket that starts a batch.
        ([(0, 4), (7, 4), (9, 4)], 100, 3, 3,
         [PlannedBatch(1, 100, 121, 4), PlannedBatch(2, 121, 127, 4), PlannedBatch(3, 127, None, 4)]),
        # A heavy bucket cannot be split: the plan says so by its counts (the caller refuses it).
        ([(0, 1), (1, 98), (2, 1)], 0, 1, 2, [PlannedBatch(1, 0, 2, 99), PlannedBatch(2, 2, None, 1)]),
    ],
)  # fmt: skip
def test_batches_from_a_histogram(
    buckets: list[tuple[int, int]], first: int, width: int, count: int, expected: list[PlannedBatch]
) -> None:
    total = sum(n for _, n in buckets)
    plan = batches_from_histogram(buckets, first, width, total, count)
    assert plan == expected
    assert sum(b.planned_rows for b in plan) == total


@pytest.mark.parametrize(
    ("kind", "per_bucket", "expected"),
    [
        ("numeric_abs", [None, "12.5", "123456789012.5", "7"], "123456789012.5"),
        # PostgreSQL's order: NaN above Infinity above every number, in whichever bucket.
        ("numeric_abs", ["NaN", "Infinity", "1"], "NaN"),
        ("numeric_abs", ["1", "Infinity", "99999999999999999999"], "Infinity"),
        ("numeric_scale", [2, None, 6, 0], 6),
        ("array_shape", [False, None, True], True),
        ("array_shape", [False, False], False),
        ("numeric_abs", [None, None], None),  # no values: nothing to size or refuse
    ],
)
def test_checks_combine_across_buckets(kind: str, per_bucket: list[object], expected: object) -> None:
    assert combine_checks(kind, per_bucket) == expected


def test_a_check_without_a_combination_is_refused() -> None:
    with pytest.raises(ValueError, match="sqlite_classes"):
        combine_checks("sqlite_classes", ["integer"])
