"""Arrow → Parquet helpers: conforming a transform's output to the plan, row groups, merging parts."""

from __future__ import annotations

import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_tx.conversions import conform
from export_tx.errors import ExportError
from export_tx.parquet_io import copy_row_groups, write_parquet

SCHEMA = pa.schema([("id", pa.int64()), ("amount", pa.decimal128(12, 2))])


def _part(start: int, rows: int, row_group_rows: int = 10_000) -> io.BytesIO:
    batch = pa.record_batch([pa.array(range(start, start + rows), pa.int64()),
                             pa.array([Decimal("1.50")] * rows, pa.decimal128(12, 2))], schema=SCHEMA)  # fmt: skip
    buf = io.BytesIO()
    write_parquet(buf, SCHEMA, [batch], row_group_rows=row_group_rows)
    buf.seek(0)
    return buf


def test_conform_casts_text_numbers_and_orders_columns() -> None:
    raw = pa.record_batch([pa.array(["2.50", None]), pa.array([1, 2], pa.int32())], names=["amount", "id"])
    out = conform(raw, SCHEMA)
    assert out.schema == SCHEMA
    assert out.to_pylist() == [{"id": 1, "amount": Decimal("2.50")}, {"id": 2, "amount": None}]


def test_conform_names_the_missing_or_unreadable_column() -> None:
    with pytest.raises(ExportError, match="column 'amount': the definition's transform did not return this column"):
        conform(pa.record_batch([pa.array([1])], names=["id"]), SCHEMA)
    with pytest.raises(ExportError, match="column 'amount': a value does not convert exactly to decimal128"):
        conform(pa.record_batch([pa.array([1]), pa.array(["lots"])], names=["id", "amount"]), SCHEMA)


def test_write_buffers_into_row_groups() -> None:
    batches = [pa.record_batch([pa.array(range(i, i + 100), pa.int64()), pa.array([None] * 100, pa.decimal128(12, 2))],
                               schema=SCHEMA) for i in range(0, 1000, 100)]  # fmt: skip
    buf = io.BytesIO()
    assert write_parquet(buf, SCHEMA, batches, row_group_rows=300) == 1000
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]


def test_merge_keeps_order_and_gathers_small_row_groups() -> None:
    parts = [_part(i * 300, 300) for i in range(5)]
    out = io.BytesIO()
    assert copy_row_groups(out, SCHEMA, parts, row_group_rows=1000) == 1500
    merged = pq.ParquetFile(io.BytesIO(out.getvalue()))
    groups = [merged.metadata.row_group(i).num_rows for i in range(merged.metadata.num_row_groups)]
    assert groups == [900, 600]
    assert merged.read().column("id").to_pylist() == list(range(1500))
    assert all(p.closed for p in parts)


def test_merge_refuses_a_part_with_another_schema() -> None:
    other = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([1], pa.int32())}), other)
    other.seek(0)
    with pytest.raises(ExportError, match="part 2 has another schema"):
        copy_row_groups(io.BytesIO(), SCHEMA, [_part(0, 10), other])
