"""Refused before any work, named, never retried: schemas that would lose columns or values,
parameters out of range, SQL that cannot run, values no file type holds exactly.

Each case swaps a registered definition for a variant (the DAG's ``definition`` Param lists the
registered names) and runs the whole DAG; the header must be FAILED with a message naming the
column or field, with no retry, no batch run and nothing left in storage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_tx.catalog import registry
from export_tx.sources import PostgresSource
from export_tx.states import State
from tests.helpers import assert_only_finished_parts, local_path, run_export, store

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def refusal_data(pg_orders: str) -> Iterator[str]:
    """A small table of values no Parquet type holds exactly (beside ordinary ones)."""
    with psycopg.connect(pg_orders, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS refusal_data")
        conn.execute(
            "CREATE TABLE refusal_data (id bigint PRIMARY KEY, amount numeric(10, 2), seen timestamptz, "
            "grid int[], at_time timetz, label text)"
        )
        conn.execute(
            "INSERT INTO refusal_data SELECT g, g / 10.0, TIMESTAMPTZ '2025-01-01 00:00+00' + g * INTERVAL '1 hour', "
            "ARRAY[g], TIMETZ '12:00+02', 'l' || g FROM generate_series(1, 3000) AS g"
        )
        conn.execute("UPDATE refusal_data SET amount = 'NaN', grid = '{{1,2},{3,4}}' WHERE id = 2500")
        conn.execute("UPDATE refusal_data SET seen = 'infinity' WHERE id = 2900")
    yield pg_orders


def _swap(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Run ``type_matrix``'s name with another definition (same DAG Param, other content)."""
    base = registry.get("type_matrix")
    monkeypatch.setitem(registry.definitions(), "type_matrix", dataclasses.replace(base, **changes))


def _refused(conf: dict[str, Any], step: str) -> tuple[Any, str]:
    run = run_export({"definition": "type_matrix", **conf})
    header = store().get(run.run_id)
    assert run.state == "failed"
    assert header.state == State.FAILED
    events = store().events(run.run_id)
    assert [e for e in events if e.kind == "retry"] == [], "a mistake that would fail again is never retried"
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances() if ti.state == "failed"}
    assert tries.get(step) == 1, tries
    assert header.result_uri is None
    assert_only_finished_parts(run.run_id)
    return run, header.error or ""


def _matrix_sql(columns: str = "*") -> str:
    return f"SELECT {columns} FROM type_matrix WHERE (:min_id IS NULL OR id >= :min_id) AND (:max_i4 IS NULL OR i4 <= :max_i4)"  # noqa: E501


@pytest.mark.usefixtures("type_matrix")
def test_a_partial_schema_is_refused_naming_the_missing_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # The older whole-schema form listing only the column the team cared about: it used to export
    # that one column and succeed. Now it is refused; nothing is dropped silently.
    _swap(monkeypatch, schema=lambda: pa.schema([("n", pa.decimal128(38, 10))]))
    run, error = _refused({}, "plan_batches")
    assert error.startswith("planning: definition 'type_matrix': schema: lists 1 of the 33 columns")
    assert "missing: id, i2, i4, i8," in error and "declare only the types to change in columns" in error
    assert store().plan(run.run_id) == []


@pytest.mark.usefixtures("type_matrix")
def test_lossy_overrides_are_refused_naming_column_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {"f8": "int64", "n": "decimal(38, 4)", "i8": "int32", "tstz": "timestamp", "u": "binary"}
    _swap(monkeypatch, columns=overrides)
    _, error = _refused({}, "plan_batches")
    assert "columns.f8: double precision (double) cannot become int64 without changing values" in error
    assert "columns.n: numeric(38,10) (decimal128(38, 10)) cannot become decimal128(38, 4)" in error
    assert "fewer decimal places would round values" in error
    assert "columns.i8: bigint (int64) cannot become int32" in error and "a narrower integer" in error
    assert "columns.tstz: timestamp with time zone (timestamp[us, tz=UTC]) cannot become timestamp[us]" in error
    assert "columns.u: uuid (uuid) cannot become binary" in error


@pytest.mark.usefixtures("type_matrix")
def test_an_unknown_override_column_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, columns={"amout": "decimal(12, 2)"})
    _, error = _refused({}, "plan_batches")
    assert "columns.amout: the query returns no column 'amout'; it returns: id, i2, i4" in error


def test_overrides_that_keep_every_value_apply_and_uuid_as_text_is_its_canonical_form(
    monkeypatch: pytest.MonkeyPatch, type_matrix: str
) -> None:
    _swap(monkeypatch, sql=_matrix_sql("id, u, i4, n, d"),
          columns={"u": "string", "i4": "int64", "n": "decimal(40, 12)", "d": "timestamp"})  # fmt: skip
    run = run_export({"definition": "type_matrix"})
    header = store().get(run.run_id)
    assert run.state == "success", header.error
    table = pq.read_table(local_path(header.result_uri or ""))
    assert [str(f.type) for f in table.schema] == ["int64", "string", "int64", "decimal256(40, 12)", "timestamp[us]"]
    with psycopg.connect(type_matrix) as conn:
        expected = conn.execute(
            "SELECT id, u::text, i4, (d - DATE '1970-01-01')::bigint * 86400000000 FROM type_matrix ORDER BY id"
        ).fetchall()
    exported = table.select(["id", "u", "i4"]).to_pylist()
    midnights = table.column("d").combine_chunks().view(pa.int64()).to_pylist()  # BC dates too
    assert [(r["id"], r["u"], r["i4"], m) for r, m in zip(exported, midnights, strict=True)] == expected
    by_id = {r["id"]: r["u"] for r in exported}
    assert by_id[4] == "41424344-4546-4748-494a-4b4c4d4e4f50"  # bytes 'ABCDEFGHIJKLMNOP', as a uuid's text


@pytest.mark.usefixtures("type_matrix")
def test_a_parameter_out_of_range_for_its_column_type_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # i4 is integer: 3·10^9 is a valid 64-bit integer (the request passes) but not a valid integer.
    _, error = _refused({"params": {"max_i4": 3_000_000_000}}, "plan_batches")
    assert error == (
        "planning: invalid request: params.max_i4: out of range for integer, the type :max_i4 has in the "
        "definition's query"
    )


@pytest.mark.usefixtures("type_matrix")
def test_a_parameter_beyond_64_bits_is_refused_by_the_request() -> None:
    _, error = _refused({"params": {"min_id": 10**20}}, "begin_transaction")
    assert "params.min_id: out of range; allowed: -9223372036854775808 to 9223372036854775807" in error


@pytest.mark.usefixtures("type_matrix")
def test_bad_sql_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, sql="SELECT id FROM type_matrx WHERE (:min_id IS NULL OR id >= :min_id) OR :max_i4 = 1")
    _, error = _refused({}, "plan_batches")
    assert error == (
        "planning: definition 'type_matrix': sql: PostgreSQL refuses the query: relation \"type_matrx\" does not exist"
    )


@pytest.mark.usefixtures("type_matrix")
def test_a_query_failing_while_it_streams_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planning reads only the key; batch 3's rows divide by zero.
    sql = ("SELECT id, 100 / (i2 - 2400) AS ratio FROM type_matrix WHERE (:min_id IS NULL OR id >= :min_id) "
           "AND (:max_i4 IS NULL OR i4 <= :max_i4)")  # fmt: skip
    _swap(monkeypatch, sql=sql)
    _, error = _refused({"batch_size": 1000}, "export_batch")
    # The driver's own error class, with PostgreSQL's SQLSTATE, reaches the user.
    assert (
        "failed (DataError: division by zero (SQLSTATE 22012)); not retried: it would fail the same way again" in error
    )


@pytest.mark.usefixtures("refusal_data")
@pytest.mark.parametrize(
    ("columns", "step", "fragment"),
    [
        ("id, amount", "plan_batches",
         "column 'amount': holds NaN, which a Parquet decimal cannot hold; declare it as string"),
        ("id, grid", "plan_batches",
         "column 'grid': holds multi-dimensional arrays or arrays not starting at index 1"),
        ("id, at_time", "plan_batches",
         "columns.at_time: time with time zone is a time with an offset, which no Parquet type holds exactly"),
        ("id, seen", "export_batch",
         "column 'seen': holds 'infinity' or a timestamp after the year 294246"),
    ],
)  # fmt: skip
def test_values_no_file_type_holds_are_refused_naming_the_column(
    monkeypatch: pytest.MonkeyPatch, columns: str, step: str, fragment: str
) -> None:
    sql = f"SELECT {columns} FROM refusal_data WHERE (:min_id IS NULL OR id >= :min_id) OR :max_i4 = 0"
    _swap(monkeypatch, sql=sql)
    _, error = _refused({"batch_size": 1000}, step)
    assert fragment in error


@pytest.mark.usefixtures("refusal_data")
def test_declared_as_string_such_values_export_as_postgresqls_text(monkeypatch: pytest.MonkeyPatch) -> None:
    sql = (
        "SELECT id, amount, grid, at_time, seen FROM refusal_data "
        "WHERE (:min_id IS NULL OR id >= :min_id) OR :max_i4 = 0"
    )
    _swap(monkeypatch, sql=sql, columns={"amount": "string", "grid": "string", "at_time": "string", "seen": "string"})
    run = run_export({"definition": "type_matrix", "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "success", header.error
    rows = {r["id"]: r for r in pq.read_table(local_path(header.result_uri or "")).to_pylist()}
    assert rows[2500]["amount"] == "NaN" and rows[2500]["grid"] == "{{1,2},{3,4}}"
    assert rows[2900]["seen"] == "infinity" and rows[1]["at_time"] == "12:00:00+02"


def test_a_missing_connection_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, source=PostgresSource("no_such_connection"))
    _, error = _refused({}, "plan_batches")
    assert "no_such_connection" in error and "not retried" in error
