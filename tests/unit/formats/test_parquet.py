"""Arrow → Parquet helpers: conforming a transform's output to the plan, row groups, merging parts."""

from __future__ import annotations

import io
import struct
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_tx.columns.conversions import conform
from export_tx.errors import ExportError
from export_tx.formats.parquet import merge_parts, write_parquet
from export_tx.storage import HashingWriter
from tests.unit.formats.test_parquet_footer import INDEXED, RICH, check_layout, rich_table, write_file

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
    assert write_parquet(buf, SCHEMA, batches, row_group_rows=250) == 1000
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    # Each buffer is one group: 300 rows (three fetched batches reached 250), never 250 plus 50.
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]


# -- merge_parts: the byte-copy merge ------------------------------------------------------------


class WriteOnly:
    """A sink like ``storage.HashingWriter`` without its extras: ``write()`` alone, no seek, no tell."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self.buffer.write(data)


def _rich_part(start: int, rows: int, row_group_rows: int = 1000, **options: Any) -> bytes:
    """A part as the batch tasks write it (``write_parquet``), or with writer ``options`` (page indexes)."""
    if options:
        return write_file(rich_table(start, rows), row_group_rows, **options)
    buffer = io.BytesIO()
    write_parquet(buffer, RICH, rich_table(start, rows).to_batches(max_chunksize=500), row_group_rows=row_group_rows)
    return buffer.getvalue()


def _merge(files: list[bytes]) -> tuple[int, bytes]:
    """Merge parts of RICH in groups of ~1000 rows; every part must be closed afterwards."""
    parts = [io.BytesIO(data) for data in files]
    sink = WriteOnly()
    rows = merge_parts(sink, RICH, parts, row_group_rows=1000)
    assert all(part.closed for part in parts)
    return rows, sink.buffer.getvalue()


def _groups(data: bytes) -> list[int]:
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _body(data: bytes) -> bytes:
    """The bytes between a file's leading magic and its footer."""
    return data[4 : -8 - struct.unpack("<I", data[-8:-4])[0]]


def test_merge_parts_copies_the_parts_bytes_and_reads_back_as_their_concatenation() -> None:
    sizes = [(0, 2500), (2500, 0), (2500, 1200), (3700, 3100)]  # a part without rows in the middle
    files = [_rich_part(start, rows) for start, rows in sizes]
    empty_group = write_file(rich_table(0, 0), 1000)  # pyarrow writes one row group of 0 rows
    rows, merged = _merge([*files[:2], empty_group, *files[2:]])

    assert rows == 6800
    assert pq.read_table(io.BytesIO(merged)).equals(pa.concat_tables(rich_table(s, n) for s, n in sizes))
    # Every row group of the parts, in order, each as it was (write_parquet gathers batches of 500).
    part_groups = [(pq.ParquetFile(io.BytesIO(data)), g) for data in files for g in range(len(_groups(data)))]
    assert _groups(merged) == [1000, 1000, 500, 1000, 200, 1000, 1000, 1000, 100]
    assert _groups(merged) == [part.metadata.row_group(g).num_rows for part, g in part_groups]
    merged_file = pq.ParquetFile(io.BytesIO(merged))
    for i, (part, g) in enumerate(part_groups):
        assert merged_file.read_row_group(i).equals(part.read_row_group(g))
    for data in files:
        assert _body(data) in merged  # copied, not re-encoded
    assert merged_file.metadata.metadata == pq.ParquetFile(io.BytesIO(files[0])).metadata.metadata


@pytest.mark.parametrize("options", [{}, INDEXED], ids=["plain", "indexed"])
def test_merge_parts_of_one_part_gives_the_part_byte_for_byte(options: dict[str, Any]) -> None:
    data = _rich_part(0, 2500, **options)
    assert _merge([data]) == (2500, data)


def test_merge_parts_keeps_page_indexes_and_bloom_filters_valid() -> None:
    tables = [rich_table(0, 2500), rich_table(2500, 1800), rich_table(4300, 900)]
    files = [write_file(table, 1000, **INDEXED) for table in tables]
    rows, merged = _merge(files)

    assert rows == 5200
    assert check_layout(merged) == sum(check_layout(data) for data in files)
    meta = pq.ParquetFile(io.BytesIO(merged)).metadata
    assert meta.num_row_groups == 3 + 2 + 1
    for i in range(meta.num_row_groups):
        for j in range(meta.num_columns):
            column = meta.row_group(i).column(j)
            assert column.has_offset_index and column.has_column_index
    assert pq.read_table(io.BytesIO(merged)).equals(pa.concat_tables(tables))


def test_merge_parts_gathers_tiny_row_groups_and_copies_the_big_ones() -> None:
    tiny = [_part(i * 200, 200) for i in range(11)]  # 200 < 1000 // 4 rows a row group
    out = WriteOnly()
    assert merge_parts(out, SCHEMA, tiny, row_group_rows=1000) == 2200
    merged = out.buffer.getvalue()
    assert _groups(merged) == [1000, 1000, 200]
    assert pq.read_table(io.BytesIO(merged)).column("id").to_pylist() == list(range(2200))

    # Big parts (row groups averaging >= row_group_rows // 4 rows) are copied, small ones between
    # them gathered; the rows stay in order.
    files = [_rich_part(0, 2000), _rich_part(2000, 100), _rich_part(2100, 100), _rich_part(2200, 1000)]
    rows, merged = _merge(files)
    assert rows == 3200
    assert _groups(merged) == [1000, 1000, 200, 1000]
    assert _body(files[0]) in merged and _body(files[3]) in merged
    assert pq.read_table(io.BytesIO(merged)).equals(rich_table(0, 3200))


def test_merge_parts_without_rows_writes_an_empty_file_with_the_schema() -> None:
    raw = io.BytesIO()
    sink = HashingWriter(raw)
    assert merge_parts(sink, RICH, []) == 0
    empty = pq.read_table(io.BytesIO(raw.getvalue()))
    assert empty.num_rows == 0 and empty.schema.equals(RICH, check_metadata=False)

    rows, merged = _merge([_rich_part(0, 0), write_file(rich_table(0, 0), 1000)])  # only parts without rows
    assert rows == 0 and pq.read_table(io.BytesIO(merged)).equals(rich_table(0, 0))


def test_merge_parts_refuses_parts_it_cannot_join() -> None:
    other = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([1], pa.int32())}), other)
    with pytest.raises(ExportError, match="part 2 has another schema"):
        _merge([_rich_part(0, 10), other.getvalue()])
    with pytest.raises(ExportError, match="part 2 has an encrypted footer"):
        _merge([_rich_part(0, 10), _rich_part(10, 10)[:-4] + b"PARE"])
    tagged = write_file(rich_table(10, 10).replace_schema_metadata({"owner": "someone else"}), 1000)
    with pytest.raises(ExportError, match="part 2 has another key-value metadata than part 1"):
        _merge([_rich_part(0, 10), tagged])


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 2500), min_size=1, max_size=5),
    row_group_rows=st.sampled_from([100, 400, 1000]),
)
def test_merge_parts_equals_the_concatenation_whatever_the_part_sizes(sizes: list[int], row_group_rows: int) -> None:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    parts = [_part(start, rows, row_group_rows) for start, rows in zip(starts, sizes, strict=True)]
    out = WriteOnly()
    assert merge_parts(out, SCHEMA, parts, row_group_rows=row_group_rows) == sum(sizes)
    merged = pq.read_table(io.BytesIO(out.buffer.getvalue()))
    assert merged.column("id").to_pylist() == list(range(sum(sizes)))
    assert merged.column("amount").to_pylist() == [Decimal("1.50")] * sum(sizes)


@pytest.mark.parametrize(
    "t",
    [pa.int8(), pa.int64(), pa.bool_(), pa.float64(), pa.decimal128(12, 2), pa.decimal256(60, 3), pa.string(),
     pa.large_string(), pa.binary(), pa.large_binary(), pa.binary(16), pa.date32(), pa.timestamp("us", tz="UTC"),
     pa.time64("us"), pa.duration("us"), pa.month_day_nano_interval(), pa.list_(pa.int32()),
     pa.large_list(pa.string()), pa.list_(pa.list_(pa.string())), pa.struct([("m", pa.int32()), ("d", pa.int32())]),
     pa.map_(pa.string(), pa.int64()), pa.null(), pa.uuid(), pa.json_(), pa.dictionary(pa.int32(), pa.string())],
    ids=str,
)  # fmt: skip
def test_an_empty_array_built_from_buffers_equals_pyarrows_own(t: pa.DataType) -> None:
    from export_tx.columns.conversions import empty_array

    built = empty_array(t)
    built.validate(full=True)
    assert built.type == t and built.equals(pa.array([], t))
