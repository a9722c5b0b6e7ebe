"""Every PostgreSQL type the product maps, exported through a whole run and compared value by value
with the source read by psycopg: NULLs, extremes, NaN/±Infinity, DST, 1 MB values, unicode.

The definition (``tests/definitions/type_matrix.yaml``) declares no type: the source decides.
"""

from __future__ import annotations

import psycopg
import pyarrow.parquet as pq
import pytest

from export_tx.states import State
from tests.compare import file_values, float32, same
from tests.helpers import local_path, run_export, store
from tests.type_matrix_table import ASCII_UUID, BIG_BYTES, BIG_TEXT, COLUMNS, SPECIAL_ROWS

pytestmark = pytest.mark.usefixtures("airflow_db", "type_matrix")

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
       e::text, ip::text, cd::text, dom, doms::numeric(10, 2)[], o
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
    "dom": "decimal128(10, 2)", "doms": "list<element: decimal128(10, 2)>", "o": "int64",
}  # fmt: skip


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
        exported = file_values(table, name)
        expected = [row[index] for row in source]
        if name == "f4":
            expected = [float32(v) for v in expected]
        for row_no, (want, got) in enumerate(zip(expected, exported, strict=True)):
            if not same(want, got):
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
