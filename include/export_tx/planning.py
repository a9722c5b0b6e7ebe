"""Split an export into batches of ~``batch_size`` rows by **row count**, not key width.

The source numbers its rows in key order (``ROW_NUMBER()`` works on SQLite and PostgreSQL)
and every ``batch_size``-th key starts a batch; batch ``i`` is ``lo_i <= key < lo_{i+1}``.
With a unique key every batch but the last holds exactly ``batch_size`` rows, however skewed
or gappy the keys. The pure functions here are table-tested; :func:`plan_export` runs the SQL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from export_tx.definition import ExportDefinition
from export_tx.errors import ExportError, TooManyRows
from export_tx.sources import fetch_all
from export_tx.store import PlannedBatch


@dataclass(frozen=True)
class Plan:
    batches: list[PlannedBatch]
    total_rows: int
    batch_size: int
    note: str


def choose_batch_size(total_rows: int, requested: int, max_batches: int) -> int:
    """The requested size, grown just enough that the plan stays within ``max_batches``."""
    if total_rows <= 0:
        return requested
    if math.ceil(total_rows / requested) <= max_batches:
        return requested
    return math.ceil(total_rows / max_batches)


def batches_from_starts(starts: Sequence[tuple[Any, int]], total_rows: int) -> list[PlannedBatch]:
    """Build half-open key ranges from ``(first key, its row number)`` pairs in key order.

    Repeated keys (a non-unique key column) never straddle two batches: a start key equal
    to the previous one is dropped, so its rows stay in one range.
    """
    kept: list[tuple[Any, int]] = []
    for key, row_number in starts:
        if kept and key == kept[-1][0]:
            continue
        kept.append((key, row_number))
    plan: list[PlannedBatch] = []
    for i, (key, row_number) in enumerate(kept):
        last = i == len(kept) - 1
        next_row = total_rows + 1 if last else kept[i + 1][1]
        plan.append(
            PlannedBatch(
                batch_no=i + 1,
                lo=key,
                hi=None if last else kept[i + 1][0],
                planned_rows=next_row - row_number,
            )
        )
    return plan


# The SQL below wraps the definition's reviewed query and its key column (a checked plain
# identifier); every user value is a bound parameter.


def _count_sql(definition: ExportDefinition) -> str:
    key = definition.key_column
    return f"SELECT COUNT(*) AS n, COUNT({key}) AS n_key FROM ({definition.sql}) AS src"  # noqa: S608


def _starts_sql(definition: ExportDefinition) -> str:
    key = definition.key_column
    return (
        f"SELECT k, rn FROM (SELECT {key} AS k, ROW_NUMBER() OVER (ORDER BY {key}) AS rn "  # noqa: S608
        f"FROM ({definition.sql}) AS src) AS numbered "
        f"WHERE (rn - 1) % :export_tx_batch_size = 0 ORDER BY rn"
    )


def batch_sql(definition: ExportDefinition, bounded_above: bool) -> str:
    """The definition's query restricted to one batch's key range, in key order."""
    key = definition.key_column
    upper = f" AND {key} < :export_tx_hi" if bounded_above else ""
    return f"SELECT * FROM ({definition.sql}) AS src WHERE {key} >= :export_tx_lo{upper} ORDER BY {key}"  # noqa: S608


def plan_export(definition: ExportDefinition, params: Mapping[str, Any], batch_size: int, max_batches: int) -> Plan:
    """Count the matching rows, enforce the definition's limit, and compute the batches."""
    values = definition.bind_values(params)
    counts = fetch_all(definition.source, _count_sql(definition), values).to_pylist()[0]
    total, with_key = int(counts["n"]), int(counts["n_key"])
    if total > definition.max_rows:
        raise TooManyRows(
            f"the export matches {total:,} rows, over the {definition.max_rows:,} allowed for "
            f"{definition.name!r}; narrow it with params (allowed: {', '.join(sorted(definition.params))})"
        )
    if with_key != total:
        raise ExportError(
            f"{total - with_key:,} matching rows have no {definition.key_column!r}; the definition's "
            "key column must never be NULL"
        )
    size = choose_batch_size(total, batch_size, max_batches)
    if total == 0:
        return Plan([], 0, size, "planned 0 batches: no rows match; the result will be an empty file")
    starts = fetch_all(definition.source, _starts_sql(definition), {**values, "export_tx_batch_size": size})
    pairs = list(zip(starts.column("k").to_pylist(), starts.column("rn").to_pylist(), strict=True))
    batches = batches_from_starts(pairs, total)
    note = f"planned {len(batches)} batches of ~{size:,} rows for {total:,} rows"
    if size != batch_size:
        note += f" (batch_size grown from {batch_size:,} to {size:,} to stay within {max_batches} batches)"
    return Plan(batches, total, size, note)
