"""The type mapping and the override rules, table by table."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from export_tx.columns.typemap import (
    PgType,
    numeric_typmod,
    override_problem,
    parse_type,
    pg_column,
    sqlite_affinity_type,
    sqlite_column,
    type_from_text,
    type_name,
    type_to_text,
)
from export_tx.errors import Unsupported
from export_tx.planning import finish_column


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("string", pa.string()), ("TEXT", pa.string()), ("int64", pa.int64()), ("bigint", pa.int64()),
        ("integer", pa.int32()), ("float64", pa.float64()), ("double", pa.float64()), ("bool", pa.bool_()),
        ("decimal(18, 2)", pa.decimal128(18, 2)), ("numeric(40,10)", pa.decimal256(40, 10)),
        ("decimal256(20,2)", pa.decimal256(20, 2)), ("date", pa.date32()), ("time", pa.time64("us")),
        ("timestamp", pa.timestamp("us")), ("timestamptz", pa.timestamp("us", tz="UTC")),
        ("timestamp[us, tz=Europe/Paris]", pa.timestamp("us", tz="Europe/Paris")), ("uuid", pa.uuid()),
        ("json", pa.json_()), ("list<int32>", pa.list_(pa.int32())), ("binary", pa.binary()),
    ],
)  # fmt: skip
def test_type_names(text: str, expected: pa.DataType) -> None:
    assert parse_type(text) == expected
    assert type_from_text(type_to_text(expected)) == expected  # stored with the plan, exactly


@pytest.mark.parametrize("text", ["", "varchar", "decimal(80, 2)", "decimal(5, 6)", "list<nope>", 12, None])
def test_unknown_type_names_say_what_is_allowed(text: Any) -> None:
    with pytest.raises(ValueError, match="allowed|precision must be"):
        parse_type(text)


@pytest.mark.parametrize(
    ("source", "target", "keeps"),
    [
        (pa.int32(), pa.int64(), True),
        (pa.int64(), pa.int32(), False),  # a wider int into a narrower one
        (pa.int16(), pa.float32(), True),
        (pa.int32(), pa.float64(), True),
        (pa.int64(), pa.float64(), False),  # 2^53 + 1 would round
        (pa.int64(), pa.decimal128(19, 0), True),
        (pa.int64(), pa.decimal128(18, 0), False),
        (pa.int32(), pa.uint32(), False),
        (pa.float32(), pa.float64(), True),
        (pa.float64(), pa.float32(), False),
        (pa.float64(), pa.int64(), False),  # float → int
        (pa.float64(), pa.decimal128(38, 10), False),  # 0.125 would round at 2 places
        (pa.decimal128(12, 2), pa.decimal128(14, 4), True),
        (pa.decimal128(38, 10), pa.decimal128(38, 4), False),  # a decimal that loses scale
        (pa.decimal128(12, 2), pa.decimal128(11, 2), False),
        (pa.decimal128(12, 2), pa.decimal256(60, 2), True),
        (pa.decimal128(10, 0), pa.int64(), True),
        (pa.decimal128(12, 2), pa.float64(), False),
        (pa.decimal128(12, 2), pa.string(), True),
        (pa.date32(), pa.timestamp("us"), True),
        (pa.timestamp("us"), pa.date32(), False),
        (pa.timestamp("us", tz="UTC"), pa.timestamp("us", tz="Europe/Paris"), True),  # same instants
        (pa.timestamp("us", tz="UTC"), pa.timestamp("us"), False),
        (pa.timestamp("us"), pa.timestamp("ns"), False),  # years past 2262 would overflow
        (pa.timestamp("us"), pa.timestamp("ms"), False),
        (pa.uuid(), pa.binary(16), True),
        (pa.uuid(), pa.binary(), False),
        (pa.uuid(), pa.string(), False),  # raw bytes are not text (PostgreSQL renders uuid text itself)
        (pa.json_(), pa.string(), True),
        (pa.string(), pa.int64(), True),  # a checked parse: refused per value if it does not read
        (pa.string(), pa.float64(), False),  # decimal text → binary float would round
        (pa.string(), pa.timestamp("us"), True),
        (pa.binary(), pa.string(), False),
        (pa.list_(pa.int32()), pa.list_(pa.int64()), True),
        (pa.list_(pa.int64()), pa.list_(pa.int32()), False),
        (pa.null(), pa.int64(), True),
        (pa.bool_(), pa.int8(), True),
        (pa.bool_(), pa.float64(), False),
    ],
)
def test_override_rules(source: pa.DataType, target: pa.DataType, keeps: bool) -> None:
    problem = override_problem(source, target)
    assert (problem is None) == keeps, problem


def _pg(name: str, typmod: int = -1, typtype: str = "b", element: PgType | None = None) -> PgType:
    return PgType(name, name, typtype, typmod, element)


def _numeric_mod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


@pytest.mark.parametrize(
    ("pg", "file_type", "select"),
    [
        (_pg("int2"), "int16", '"c"'),
        (_pg("int4"), "int32", '"c"'),
        (_pg("int8"), "int64", '"c"'),
        (_pg("numeric", _numeric_mod(38, 10)), "decimal128(38, 10)", '"c"'),
        (_pg("numeric", _numeric_mod(50, 5)), "decimal256(50, 5)", '"c"'),
        (_pg("numeric", _numeric_mod(5, -2)), "decimal128(7, 0)", '"c"'),
        (_pg("float4"), "float", '"c"'),
        (_pg("float8"), "double", '"c"'),
        (_pg("bool"), "bool", '"c"'),
        (_pg("varchar"), "string", '"c"'),
        (_pg("bpchar"), "string", '"c"'),
        (_pg("bytea"), "binary", '"c"'),
        (_pg("date"), "date32[day]", '"c"'),
        (_pg("time"), "time64[us]", '"c"'),
        (_pg("timestamp"), "timestamp[us]", '"c"'),
        (_pg("timestamptz"), "timestamp[us, tz=UTC]", '"c"'),
        (_pg("interval"), "struct<months: int32, days: int32, microseconds: int64>", '"c"'),
        (_pg("uuid"), "uuid", '"c"'),
        (_pg("jsonb"), "json", '"c"'),
        (_pg("_int4", element=_pg("int4")), "list<item: int32>", '"c"'),
        (_pg("_mood", element=_pg("mood", typtype="e")), "list<item: string>", 'CAST("c" AS text[]) AS "c"'),
        (_pg("mood", typtype="e"), "string", 'CAST("c" AS text) AS "c"'),
        (_pg("inet"), "string", 'CAST("c" AS text) AS "c"'),
        (_pg("cidr"), "string", 'CAST("c" AS text) AS "c"'),
        (_pg("oid"), "int64", 'CAST("c" AS bigint) AS "c"'),
    ],
)
def test_postgres_mapping(pg: PgType, file_type: str, select: str) -> None:
    spec = pg_column("c", pg)
    assert type_name(spec.arrow_type) == file_type
    assert spec.select == select


def test_numeric_without_precision_is_sized_by_its_data() -> None:
    spec = pg_column("amount", _pg("numeric"))
    assert spec.arrow is None and [c.kind for c in spec.checks] == ["numeric_abs", "numeric_scale"]
    done, problem = finish_column(spec, {"numeric_abs": "123456.5", "numeric_scale": 4})
    assert problem is None and done.arrow_type == pa.decimal128(38, 4)
    assert "numeric without precision: decimal128(38, 4)" in (done.note or "")
    wide, problem = finish_column(spec, {"numeric_abs": "1" + "0" * 40, "numeric_scale": 2})
    assert problem is None and wide.arrow_type == pa.decimal256(76, 2)
    _, problem = finish_column(spec, {"numeric_abs": "1" + "0" * 80, "numeric_scale": 2})
    assert problem is not None and "more than a Parquet decimal holds" in problem
    for value in ("nan", "inf"):
        _, problem = finish_column(spec, {"numeric_abs": value, "numeric_scale": 0})
        assert problem is not None and "which a Parquet decimal cannot hold; declare it as string" in problem


def test_numeric_typmod() -> None:
    assert numeric_typmod(-1) is None
    assert numeric_typmod(_numeric_mod(38, 10)) == (38, 10)
    assert numeric_typmod(_numeric_mod(5, -2)) == (5, -2)


@pytest.mark.parametrize("name", ["timetz", "money", "tsrange", "point", "unknown<oid:1>"])
def test_types_with_no_exact_file_type_are_refused_with_a_way_out(name: str) -> None:
    with pytest.raises(Unsupported, match="declare it as string"):
        pg_column("c", _pg(name, typtype="r" if name == "tsrange" else "b"))


@pytest.mark.parametrize(
    ("declared", "file_type", "allowed"),
    [
        ("INTEGER", "int64", {"integer"}), ("BIGINT", "int64", {"integer"}), ("BOOLEAN", "bool", {"integer"}),
        ("VARCHAR(10)", "string", {"text"}), ("TEXT", "string", {"text"}), ("BLOB", "binary", {"blob"}),
        ("REAL", "double", {"real", "integer"}), ("DOUBLE PRECISION", "double", {"real", "integer"}),
        ("TIMESTAMP", "timestamp[us]", {"text"}), ("DATETIME", "timestamp[us]", {"text"}),
        ("DATE", "date32[day]", {"text"}), ("DECIMAL(10,2)", "double", {"real", "integer"}),
        ("", None, set()), ("JSON", None, set()),
    ],
)  # fmt: skip
def test_sqlite_declared_types(declared: str, file_type: str | None, allowed: set[str]) -> None:
    arrow, classes, _ = sqlite_affinity_type(declared)
    assert (None if arrow is None else str(arrow)) == file_type
    assert classes == allowed


@pytest.mark.parametrize(
    ("declared", "results", "file_type", "problem"),
    [
        ("INTEGER", {"sqlite_classes": "integer,null"}, "int64", None),
        ("INTEGER", {"sqlite_classes": "integer,text"}, None, "is declared INTEGER but holds text values"),
        ("BOOLEAN", {"sqlite_classes": "integer", "sqlite_bool": 2}, None, "holds integers other than 0 and 1"),
        ("REAL", {"sqlite_classes": "real,integer", "sqlite_big_int": 1}, None, "beyond 2^53"),
        ("", {"sqlite_classes": "integer"}, "int64", None),
        ("", {"sqlite_classes": "real,integer", "sqlite_big_int": 0}, "double", None),
        ("", {"sqlite_classes": "null"}, "null", None),
        ("", {"sqlite_classes": "text,blob"}, None, "has no declared type and holds blob and text values"),
    ],
)
def test_sqlite_checks_decide(declared: str, results: dict[str, Any], file_type: str | None,
                              problem: str | None) -> None:  # fmt: skip
    done, found = finish_column(sqlite_column("c", declared), results)
    if problem is None:
        assert found is None and str(done.arrow_type) == file_type
    else:
        assert found is not None and problem in found
