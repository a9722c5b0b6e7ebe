"""JSON Lines parts and their merge: every line one object, keys in column order, values exact
(decimals as strings, int64 as numbers, ISO times, base64 bytes, null); gzip parts as members."""

from __future__ import annotations

import base64
import gzip
import io
import json
from datetime import UTC
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from export_tx import formats
from export_tx.errors import DataNotExportable
from tests.unit.formats.text_batches import ROWS, SCHEMA, batch, many


def _json(name: str, value: Any) -> Any:
    """The JSON value a line must hold, computed here with Python's own types."""
    if value is None:
        return None
    if name in ("amount", "big"):
        return format(value, "f")
    if name == "ts" or name == "at":
        return value.isoformat(timespec="microseconds")
    if name == "tstz":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    if name == "day":
        return value.isoformat()
    if name == "raw":
        return base64.b64encode(value).decode()
    if name == "u":
        return str(value)
    if name == "j":
        return json.loads(value, parse_float=Decimal)
    if name == "amounts":
        return [None if v is None else format(v, "f") for v in value]
    if name == "f8" and value == float("inf"):
        return "Infinity"
    return value


def _write(name: str, *batches: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    assert formats.get(name).write_part(sink, SCHEMA, batches) == sum(b.num_rows for b in batches)
    return sink.getvalue()


def _merge(name: str, parts: list[bytes]) -> tuple[bytes, int]:
    sink = io.BytesIO()
    written = formats.get(name).merge_parts(sink, SCHEMA, (io.BytesIO(p) for p in parts))
    return sink.getvalue(), written


@pytest.mark.parametrize("name", ["jsonl", "jsonl.gz"])
def test_three_parts_merge_and_every_value_is_exact(name: str) -> None:
    parts = [_write(name, batch()), _write(name, many(3, 10), many(2, 20)), _write(name)]
    merged, written = _merge(name, parts)
    assert written == 9 == formats.get(name).count_rows(io.BytesIO(merged))
    text = (gzip.decompress(merged) if name == "jsonl.gz" else merged).decode("utf-8")
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 10  # one line a row, each ended
    expected_rows = [*ROWS, *[[10 + i, *ROWS[i][1:]] for i in range(3)], *[[20 + i, *ROWS[i][1:]] for i in range(2)]]
    for line, want in zip(lines[:-1], expected_rows, strict=True):
        got = json.loads(line, parse_float=Decimal)
        assert list(got) == SCHEMA.names  # keys in column order
        for field, value in zip(SCHEMA, want, strict=True):
            expected = _json(field.name, value)
            if field.name == "f8" and isinstance(expected, float):
                assert float(got[field.name]) == expected  # the shortest text of the same float
            else:
                assert got[field.name] == expected, (field.name, got[field.name], value)


def test_types_on_the_wire() -> None:
    schema = pa.schema([("i", pa.int64()), ("d", pa.decimal128(20, 2)), ("f", pa.float64())])
    values = [2**63 - 1, -(2**63)]
    rows = pa.RecordBatch.from_arrays(
        [pa.array(values), pa.array([Decimal("0.10"), None]), pa.array([float("nan"), -float("inf")])], schema=schema
    )
    sink = io.BytesIO()
    formats.get("jsonl").write_part(sink, schema, [rows])
    assert sink.getvalue() == (
        b'{"i":9223372036854775807,"d":"0.10","f":"NaN"}\n{"i":-9223372036854775808,"d":null,"f":"-Infinity"}\n'
    )
    assert [json.loads(line)["i"] for line in sink.getvalue().splitlines()] == values  # int64 exact as numbers


def test_line_breaks_and_quotes_stay_inside_one_line() -> None:
    data = _write("jsonl", batch())
    lines = data.decode().splitlines()
    assert len(lines) == len(ROWS)
    first = json.loads(lines[0])
    assert first["text"] == ROWS[0][1] and first["raw"] == base64.b64encode(ROWS[0][8]).decode()
    assert first["j"] == {"a": [1, 2.5]}  # the source's JSON value itself, one line
    assert json.loads(lines[3])["text"] == ROWS[3][1]  # unicode kept as it is


def test_a_gzip_merge_is_the_concatenation_of_members() -> None:
    parts = [_write("jsonl.gz", many(4, 0)), _write("jsonl.gz", many(5, 4)), _write("jsonl.gz")]
    merged, written = _merge("jsonl.gz", parts)
    assert written == 9
    assert merged == b"".join(parts)
    assert gzip.decompress(merged) == b"".join(gzip.decompress(p) for p in parts)
    assert gzip.decompress(merged) == _merge("jsonl", [_write("jsonl", many(4, 0)), _write("jsonl", many(5, 4))])[0]


def test_a_truncated_gzip_part_is_not_merged() -> None:
    from export_tx.errors import IntegrityError

    part = _write("jsonl.gz", many(50))
    with pytest.raises(IntegrityError, match="truncated"):
        _merge("jsonl.gz", [part[:-9]])


def test_an_invalid_json_value_is_refused_naming_the_column() -> None:
    schema = pa.schema([("j", pa.json_())])
    rows = pa.RecordBatch.from_arrays(
        [pa.ExtensionArray.from_storage(pa.json_(), pa.array(["{not json"]))], schema=schema
    )
    with pytest.raises(DataNotExportable) as refused:
        formats.get("jsonl").write_part(io.BytesIO(), schema, [rows])
    assert refused.value.column == "j" and "not JSON" in str(refused.value)


def test_a_type_without_exact_text_is_refused_before_any_work() -> None:
    schema = pa.schema([("id", pa.int64()), ("span", pa.duration("s"))])
    for name in ("jsonl", "jsonl.gz"):
        with pytest.raises(DataNotExportable) as refused:
            formats.get(name).check(schema)
        assert refused.value.column == "span" and "JSON Lines file cannot hold it exactly" in str(refused.value)
    formats.get("jsonl").check(SCHEMA)


def test_media_types_and_suffixes() -> None:
    assert (formats.get("jsonl").media_type, formats.get("jsonl").suffix) == ("application/x-ndjson", ".jsonl")
    assert (formats.get("jsonl.gz").media_type, formats.get("jsonl.gz").suffix) == ("application/gzip", ".jsonl.gz")
