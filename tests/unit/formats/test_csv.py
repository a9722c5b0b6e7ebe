"""CSV parts and their merge: RFC 4180 read back by Python's csv module equals the values as
exact text; one header; NULL apart from the empty string; gzip parts merged as members."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import math
from datetime import UTC
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from export_tx import formats
from export_tx.errors import DataNotExportable
from export_tx.formats.text import RecordCounter
from tests.unit.formats.text_batches import ROWS, SCHEMA, batch, many


def _text(name: str, value: Any) -> str:
    """The exact text a CSV field must hold, computed here with Python's own types."""
    if value is None:
        return ""
    if name in ("amount", "big"):
        return format(value, "f")
    if name == "ts":
        return value.isoformat(timespec="microseconds")
    if name == "tstz":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    if name == "at":
        return value.isoformat(timespec="microseconds")
    if name == "day":
        return value.isoformat()
    if name == "raw":
        return base64.b64encode(value).decode()
    if name == "u":
        return str(value)
    if name == "amounts":
        return json.dumps([None if v is None else format(v, "f") for v in value], separators=(",", ":"))
    if name == "iv":
        return json.dumps(value, separators=(",", ":"))
    if name == "ok":
        return "true" if value else "false"
    return str(value)


def _write(name: str, *batches: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    rows = formats.get(name).write_part(sink, SCHEMA, batches)
    assert rows == sum(b.num_rows for b in batches)
    return sink.getvalue()


def _merge(name: str, parts: list[bytes]) -> tuple[bytes, int]:
    sink = io.BytesIO()
    written = formats.get(name).merge_parts(sink, SCHEMA, (io.BytesIO(p) for p in parts))
    return sink.getvalue(), written


def _records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True))


@pytest.mark.parametrize("name", ["csv", "csv.gz"])
def test_three_parts_merge_into_one_header_and_every_value_exact(name: str) -> None:
    parts = [_write(name, batch()), _write(name, many(3, 10), many(2, 20)), _write(name)]
    merged, written = _merge(name, parts)
    assert written == 9 == formats.get(name).count_rows(io.BytesIO(merged))
    text = gzip.decompress(merged) if name == "csv.gz" else merged
    records = _records(text)
    assert records[0] == SCHEMA.names  # the header, exactly once
    assert sum(r == SCHEMA.names for r in records) == 1
    assert len(records) == 1 + 9
    expected_rows = [*ROWS, *[[10 + i, *ROWS[i][1:]] for i in range(3)], *[[20 + i, *ROWS[i][1:]] for i in range(2)]]
    for got, want in zip(records[1:], expected_rows, strict=True):
        for field, cell, value in zip(SCHEMA, got, want, strict=True):
            if field.name == "f8" and value is not None:
                assert float(cell) == value or (math.isnan(value) and math.isnan(float(cell)))
            elif field.name == "j" and value is not None:
                assert cell == value  # the source's own JSON text, line breaks and all
            else:
                assert cell == _text(field.name, value), (field.name, cell, value)


def test_quotes_line_breaks_and_null_versus_empty_string_on_the_wire() -> None:
    data = _write("csv", batch())
    # RFC 4180: quotes doubled inside quotes, the line break inside them; CRLF ends a record.
    assert b'1,"he said ""hi"",\nthen left\r\n",' in data
    row2 = data.split(b"\r\n")[2]  # after row 1's record (its value ends in CRLF inside quotes)
    assert row2 == b"2" + b"," * (len(SCHEMA) - 1)  # NULL: empty and unquoted
    assert b'\r\n3,"",' in data  # the empty string: quoted
    assert b',"-0.0000000001",' in data  # never scientific notation
    assert b',"1234567890123456789012345678.0123456789",' in data


def test_a_gzip_merge_is_the_concatenation_of_members() -> None:
    parts = [_write("csv.gz", many(4, 0)), _write("csv.gz", many(5, 4))]
    merged, _ = _merge("csv.gz", parts)
    header = _merge("csv.gz", [])[0]
    assert merged == header + parts[0] + parts[1]  # no part decompressed and compressed again
    assert gzip.decompress(merged) == (gzip.decompress(header) + gzip.decompress(parts[0]) + gzip.decompress(parts[1]))
    plain, _ = _merge("csv", [_write("csv", many(4, 0)), _write("csv", many(5, 4))])
    assert gzip.decompress(merged) == plain


def test_no_rows_give_the_header_only() -> None:
    merged, written = _merge("csv", [_write("csv"), _write("csv")])
    assert written == 0 == formats.get("csv").count_rows(io.BytesIO(merged))
    assert _records(merged) == [SCHEMA.names]


def test_rows_are_counted_by_their_quoting_not_their_lines() -> None:
    rows = many(1000)
    data = _write("csv", rows)
    assert data.count(b"\n") > 1000 + 500  # embedded line breaks
    assert formats.get("csv").count_rows(io.BytesIO(b'"h"\r\n' + data)) == 1000
    # Fed in pieces of every size, a quote or a CRLF split across two pieces.
    for size in (1, 7, 4096):
        counter = RecordCounter(quoted=True)
        for at in range(0, len(data), size):
            counter.feed(data[at : at + size])
        assert counter.total() == 1000


def test_a_part_is_written_one_batch_at_a_time() -> None:
    """The writer takes an iterator and writes each batch before the next is fetched."""
    sink = io.BytesIO()
    seen: list[int] = []

    def batches() -> Any:
        for i in range(3):
            seen.append(len(sink.getvalue()))
            yield many(10, i * 10)

    formats.get("csv").write_part(sink, SCHEMA, batches())
    assert seen[0] == 0 and seen[0] < seen[1] < seen[2]


@pytest.mark.parametrize(
    ("column_type", "fragment"),
    [
        (pa.duration("us"), "duration[us] has no exact text form"),
        (pa.map_(pa.string(), pa.int32()), "has no exact text form"),
        (pa.list_(pa.float16()), "its elements: half floats"),
        (pa.dictionary(pa.int32(), pa.string()), "has no exact text form"),
    ],
)
def test_a_type_without_exact_text_is_refused_naming_the_column(column_type: pa.DataType, fragment: str) -> None:
    schema = pa.schema([("id", pa.int64()), ("odd", column_type)])
    for name in ("csv", "csv.gz"):
        with pytest.raises(DataNotExportable) as refused:
            formats.get(name).check(schema)
        assert refused.value.column == "odd" and fragment in str(refused.value)
        assert "choose the format parquet" in str(refused.value)
    formats.get("csv").check(SCHEMA)  # every type of the plan is fine


def test_media_types_and_suffixes() -> None:
    assert (formats.get("csv").media_type, formats.get("csv").suffix) == ("text/csv", ".csv")
    assert (formats.get("csv.gz").media_type, formats.get("csv.gz").suffix) == ("application/gzip", ".csv.gz")
    assert "parquet.gz" not in formats.FORMATS and formats.DEFAULT == "parquet"


def test_decimals_are_their_exact_text_whatever_the_scale() -> None:
    values = [Decimal("0.000000000000000001"), Decimal("-12345678901234567890.123456789012345678"), Decimal("0E-18")]
    schema = pa.schema([("d", pa.decimal128(38, 18))])
    data = _write_any(
        "csv", schema, pa.RecordBatch.from_arrays([pa.array(values, pa.decimal128(38, 18))], schema=schema)
    )
    cells = [r[0] for r in _records(b'"d"\r\n' + data)[1:]]
    assert cells == ["0.000000000000000001", "-12345678901234567890.123456789012345678", "0.000000000000000000"]
    assert [Decimal(c) for c in cells] == values


def _write_any(name: str, schema: pa.Schema, *batches: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    formats.get(name).write_part(sink, schema, batches)
    return sink.getvalue()
