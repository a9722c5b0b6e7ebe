"""Every PostgreSQL type the product maps, exported through a whole run and compared value by value
with the source read by psycopg: NULLs, extremes, NaN/±Infinity, DST, 1 MB values, unicode.

The definition (``tests/definitions/type_matrix.yaml``) declares no type: the source decides.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_tx.states import State
from tests.helpers import local_path, run_export, store

pytestmark = pytest.mark.usefixtures("airflow_db")

BIG_TEXT = ("ünïcødé 🚀 שלום مرحبا\t\n" * 40_000)[:1_000_000]  # ~1 MB: emoji, RTL, tab, newline
BIG_BYTES = bytes(range(256)) * 4096  # 1 MiB, every byte value
ASCII_UUID = uuid.UUID(bytes=b"ABCDEFGHIJKLMNOP")  # its 16 bytes are printable: must stay a uuid

DDL = """
DROP TABLE IF EXISTS type_matrix;
DROP DOMAIN IF EXISTS tm_positive;
DROP TYPE IF EXISTS tm_mood;
CREATE TYPE tm_mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN tm_positive AS numeric(10, 2) CHECK (VALUE > 0);
CREATE TABLE type_matrix (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    n numeric(38, 10), n50 numeric(50, 5), nu numeric, nneg numeric(5, -2),
    f4 real, f8 double precision,
    b boolean,
    t text, vc varchar(20), ch char(5),
    by bytea,
    d date, tm time, ts timestamp, tstz timestamptz,
    iv interval,
    u uuid,
    j json, jb jsonb,
    ai integer[], at text[], an numeric(8, 2)[], ats timestamptz[],
    e tm_mood,
    ip inet, cd cidr,
    dom tm_positive,
    o oid
)
"""

# Hand-picked rows: extremes and traps. Columns not named are NULL.
SPECIAL_ROWS: list[dict[str, Any]] = [
    {"id": 1},  # every column NULL
    {
        "id": 2,
        "i2": -32768,
        "i4": -(2**31),
        "i8": -(2**63),
        "n": "-9999999999999999999999999999.9999999999",
        "n50": "-999999999999999999999999999999999999999999999.99999",
        "nu": "0.000000000000000001",
        "nneg": "-99900",
        "f4": "-3.4028235e38",
        "f8": "-1.7976931348623157e308",
        "b": False,
        "t": "",
        "vc": "",
        "ch": "",
        "by": b"",
        "d": "4713-01-01 BC",
        "tm": "00:00:00",
        "ts": "4713-01-01 00:00:00 BC",
        "tstz": "0001-01-01 00:00:00+00",
        "iv": "-178000000 years",
        "u": str(uuid.UUID(int=0)),
        "j": "[]",
        "jb": "{}",
        "ai": "{}",
        "at": "{}",
        "an": "{}",
        "ats": "{}",
        "e": "sad",
        "ip": "::1",
        "cd": "0.0.0.0/0",
        "dom": "0.01",
        "o": 0,
    },
    {
        "id": 3,
        "i2": 32767,
        "i4": 2**31 - 1,
        "i8": 2**63 - 1,
        "n": "9999999999999999999999999999.9999999999",
        "n50": "999999999999999999999999999999999999999999999.99999",
        "nu": "123456789012345678.5",
        "nneg": "99900",
        "f4": "3.4028235e38",
        "f8": "1.7976931348623157e308",
        "b": True,
        "t": "tab\there",
        "vc": "x" * 20,
        "ch": "abcde",
        "by": b"\x00\x01\xff",
        "d": "9999-12-31",
        "tm": "23:59:59.999999",
        "ts": "294246-12-31 23:59:59.999999",
        "tstz": "9999-12-31 23:59:59.999999+00",
        "iv": "178000000 years 11 mons 30 days 23:59:59.999999",
        "u": str(uuid.UUID(int=2**128 - 1)),
        "j": '{"nested": {"k": [1, 2.5, null, "ü"]},   "spaces": true}',
        "jb": '{"b": [1, 2], "a": "😀"}',
        "ai": "{1,NULL,-2147483648}",
        "at": '{"a,b","",NULL,"🚀"}',
        "an": "{1.50,NULL,-999999.99}",
        "ats": '{"2024-03-31 01:59:59+01","2024-03-31 03:00:00+02"}',
        "e": "happy 😀",
        "ip": "2001:db8::ff00:42:8329/64",
        "cd": "10.0.0.0/8",
        "dom": "99999999.99",
        "o": 4294967295,
    },
    {
        "id": 4,
        "f4": "NaN",
        "f8": "NaN",
        "t": "emoji 🚀 and RTL שלום مرحبا\nnewline",
        "ch": "ab",
        "u": str(ASCII_UUID),
        "nu": "-1.5",
        "tstz": "2024-10-27 02:30:00+02",
        "ts": "2024-03-31 02:30:00",
        "iv": "1 mon 2 days 00:00:01.5",
        "ip": "192.168.0.1/24",
    },
    {
        "id": 5,
        "f4": "Infinity",
        "f8": "Infinity",
        "tstz": "2024-10-27 02:30:00+01",
        "t": BIG_TEXT,
        "by": BIG_BYTES,
        "nu": "0",
        "iv": "-1 years -2 days -00:00:00.000001",
    },
    {
        "id": 6,
        "f4": "-Infinity",
        "f8": "-Infinity",
        "tstz": "2024-03-31 01:59:59.999999+01",
        "ts": "1970-01-01 00:00:00",
        "f8_neg_zero": True,
    },
    {"id": 7, "f4": "1.17549435e-38", "f8": "5e-324", "tstz": "1969-12-31 23:59:59.999999+00", "d": "1970-01-01"},
]
# Filler rows: every type with ordinary values, keys skewed and gappy up to 10^12.
FILLER = """
INSERT INTO type_matrix
SELECT k, (g % 30000)::smallint, g * 7919, g::bigint * 2654435761, (g * 1.1)::numeric(38, 10),
       (g::numeric * 1000003.5)::numeric(50, 5), (g::numeric / 7)::numeric(20, 6)::numeric, (g * 100)::numeric(5, -2),
       (g / 3.0)::real, g / 7.0, g % 2 = 0,
       'row ' || g || repeat('é', g % 5), 'v' || g, 'c' || (g % 10), decode(md5(g::text), 'hex'),
       DATE '2000-01-01' + g, TIME '00:00' + g * INTERVAL '1 second',
       TIMESTAMP '2024-03-30 00:00' + g * INTERVAL '37 seconds',
       TIMESTAMPTZ '2024-10-26 00:00:00+00' + g * INTERVAL '41 seconds',
       make_interval(months => g % 13, days => g % 40, secs => g / 1000.0),
       md5(g::text)::uuid, json_build_object('g', g, 'name', 'n' || g), jsonb_build_array(g, 'x'),
       ARRAY[g, -g], ARRAY['a' || g], ARRAY[(g / 100.0)::numeric(8, 2)],
       ARRAY[TIMESTAMPTZ '2024-01-01 00:00+00' + g * INTERVAL '1 hour'],
       (ARRAY['sad', 'ok', 'happy 😀'])[1 + g % 3]::tm_mood,
       ('10.' || (g % 256) || '.0.' || (g % 200))::inet, ('10.' || (g % 256) || '.0.0/16')::cidr,
       (1 + g % 1000)::numeric(10, 2)::tm_positive, g::oid
FROM (SELECT g, CASE WHEN g < 1500 THEN 100 + g * 3 WHEN g < 2500 THEN 10000000 + g * 977
                     ELSE 1000000000000 - (3200 - g) * 1234567 END AS k
      FROM generate_series(1, 3200) AS g) AS s
"""
COLUMNS = [
    "id", "i2", "i4", "i8", "n", "n50", "nu", "nneg", "f4", "f8", "b", "t", "vc", "ch", "by", "d", "tm", "ts",
    "tstz", "iv", "u", "j", "jb", "ai", "at", "an", "ats", "e", "ip", "cd", "dom", "o",
]  # fmt: skip
# How the test reads each column from PostgreSQL with psycopg, as the exact value the file must
# hold: times as integer microseconds/days since 1970 (also BC and past 9999), intervals as their
# three parts, json as its text, enums and network addresses as PostgreSQL's text.
SOURCE_SQL = """
SELECT id, i2, i4, i8, n, n50, nu, nneg, f4, f8, b, t, vc, ch, by,
       d - DATE '1970-01-01',
       (EXTRACT(EPOCH FROM tm) * 1000000)::bigint,
       (EXTRACT(EPOCH FROM ts) * 1000000)::bigint,
       (EXTRACT(EPOCH FROM tstz) * 1000000)::bigint,
       CASE WHEN iv IS NULL THEN NULL ELSE ARRAY[
         (EXTRACT(YEAR FROM iv) * 12 + EXTRACT(MONTH FROM iv))::bigint, EXTRACT(DAY FROM iv)::bigint,
         (EXTRACT(HOUR FROM iv) * 3600000000 + EXTRACT(MINUTE FROM iv) * 60000000
          + EXTRACT(MICROSECOND FROM iv))::bigint] END,
       u, j::text, jb::text, ai, at, an,
       CASE WHEN ats IS NULL THEN NULL ELSE COALESCE((SELECT array_agg((EXTRACT(EPOCH FROM x) * 1000000)::bigint
         ORDER BY o) FROM unnest(ats) WITH ORDINALITY AS a(x, o)), '{}') END,
       e::text, ip::text, cd::text, dom, o
FROM type_matrix ORDER BY id
"""
EXPECTED_TYPES = {
    "id": "int64", "i2": "int16", "i4": "int32", "i8": "int64", "n": "decimal128(38, 10)",
    "n50": "decimal256(50, 5)", "nneg": "decimal128(7, 0)", "f4": "float", "f8": "double", "b": "bool",
    "t": "string", "vc": "string", "ch": "string", "by": "binary", "d": "date32[day]", "tm": "time64[us]",
    "ts": "timestamp[us]", "tstz": "timestamp[us, tz=UTC]",
    "iv": "struct<months: int32, days: int32, microseconds: int64>", "u": "uuid", "j": "json", "jb": "json",
    "ai": "list<element: int32>", "at": "list<element: string>", "an": "list<element: decimal128(8, 2)>",
    "ats": "list<element: timestamp[us, tz=UTC]>", "e": "string", "ip": "string", "cd": "string",
    "dom": "decimal128(10, 2)", "o": "int64",
}  # fmt: skip


def _insert_special(conn: psycopg.Connection[Any]) -> None:
    for row in SPECIAL_ROWS:
        values = {k: v for k, v in row.items() if k in COLUMNS}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        conn.execute(f"INSERT INTO type_matrix ({names}) VALUES ({marks})", list(values.values()))
        if row.get("f8_neg_zero"):
            conn.execute("UPDATE type_matrix SET f8 = '-0'::float8, f4 = '-0'::float4 WHERE id = %s", (row["id"],))


@pytest.fixture(scope="module")
def type_matrix(pg_orders: str) -> Iterator[str]:
    with psycopg.connect(pg_orders, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")  # DST-crossing values typed in local time
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        _insert_special(conn)
        conn.execute(FILLER)
        conn.execute("ANALYZE type_matrix")
    yield pg_orders


def _file_values(table: pa.Table, name: str) -> list[Any]:
    """The file's column as comparable Python values (times as integers, see SOURCE_SQL)."""
    column = table.column(name).combine_chunks()
    t = column.type
    if pa.types.is_date32(t):
        return column.view(pa.int32()).to_pylist()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return column.view(pa.int64()).to_pylist()
    if pa.types.is_list(t) and pa.types.is_timestamp(t.value_type):
        values = column.values.view(pa.int64())
        return pa.ListArray.from_arrays(column.offsets, values, mask=column.is_null()).to_pylist()
    if pa.types.is_struct(t):
        return [None if v is None else [v["months"], v["days"], v["microseconds"]] for v in column.to_pylist()]
    return column.to_pylist()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b) or (isinstance(a, Decimal) and isinstance(b, Decimal) and a == b)


def _float32(value: Any) -> Any:
    """psycopg reads real as a Python float of its shortest text; the file holds the float32 itself."""
    if value is None:
        return None
    return struct.unpack("f", struct.pack("f", value))[0]


def test_every_type_exported_exactly(type_matrix: str) -> None:
    run = run_export({"definition": "type_matrix", "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "success", header.error
    assert header.state == State.SUCCEEDED
    with psycopg.connect(type_matrix) as conn:
        source = conn.execute(SOURCE_SQL).fetchall()
    assert header.result_rows == len(source) == len(SPECIAL_ROWS) + 3200
    assert header.batches_total == 4  # skewed keys, even batches by count
    table = pq.read_table(local_path(header.result_uri or ""))
    assert table.column_names == COLUMNS, "every column, in the query's order"
    types = {f.name: str(f.type) for f in table.schema}
    types = {k: {"extension<arrow.uuid>": "uuid", "extension<arrow.json>": "json"}.get(v, v) for k, v in types.items()}
    nu_type = types.pop("nu")
    assert types == EXPECTED_TYPES
    # numeric without precision: sized from the data (18 decimal places at most), announced in the log.
    assert nu_type == "decimal128(38, 18)"
    plan_event = next(e for e in store().events(run.run_id) if e.kind == "plan")
    assert "nu: numeric without precision: decimal128(38, 18)" in plan_event.message
    # The Parquet logical types a reader sees.
    parquet_schema = str(pq.ParquetFile(local_path(header.result_uri or "")).schema)
    assert "u (UUID)" in parquet_schema and "j (JSON)" in parquet_schema

    mismatches = []
    for index, name in enumerate(COLUMNS):
        exported = _file_values(table, name)
        expected = [row[index] for row in source]
        if name == "f4":
            expected = [_float32(v) for v in expected]
        for row_no, (want, got) in enumerate(zip(expected, exported, strict=True)):
            if not _same(want, got):
                mismatches.append((name, source[row_no][0], repr(want)[:80], repr(got)[:80]))
    assert not mismatches, mismatches[:20]

    by_id = {row[0]: row for row in source}
    u = COLUMNS.index("u")
    assert table.column("u").to_pylist()[3] == ASCII_UUID == by_id[4][u]  # printable bytes stay a uuid
    assert table.column("t").to_pylist()[4] == BIG_TEXT and table.column("by").to_pylist()[4] == BIG_BYTES
    assert table.slice(0, 1).to_pylist()[0] == {c: (0 if c == "id" else None) for c in COLUMNS} | {"id": 1}
    # The status record shows source type → file type for each column.
    schema = {c["name"]: c for c in header.result_schema or []}
    assert schema["n"]["source_type"] == "numeric(38,10)" and schema["n"]["type"] == "decimal128(38, 10)"
    assert schema["dom"]["source_type"] == "numeric(10,2)"  # PostgreSQL reports a domain as its base type
    assert schema["e"]["type"] == "string" and schema["e"]["note"] == "enum labels as text"


def test_zero_rows_keep_the_full_typed_schema(type_matrix: str) -> None:
    """An integer key and an integer filter that matches nothing: a valid empty file, every type kept."""
    run = run_export({"definition": "type_matrix", "params": {"min_id": 10**15}})
    header = store().get(run.run_id)
    assert run.state == "success", header.error
    assert header.result_rows == 0 and header.batches_total == 0
    table = pq.read_table(local_path(header.result_uri or ""))
    assert table.num_rows == 0 and table.column_names == COLUMNS
    types = {f.name: str(f.type) for f in table.schema}
    assert types["n"] == "decimal128(38, 10)" and types["tstz"] == "timestamp[us, tz=UTC]"
    assert types["nu"] == "decimal128(38, 0)"  # no values to size it: announced, still a decimal
    assert [e.kind for e in store().events(run.run_id)].count("retry") == 0
