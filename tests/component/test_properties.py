"""Property: whatever the table, the exported file equals the source, value by value.

Hypothesis generates tables — column types drawn from the PostgreSQL type matrix (and SQLite's
declared types), NULL patterns (none, some, all), skewed and gappy keys of several types,
0, 1 or many rows — and batch sizes from 1 row up. Each example runs the product's own steps
(plan → every batch → merge) against the real database, then reads the source back with
psycopg / sqlite3 and compares every value with the file.

Examples are derandomised so CI runs the same ones every time; ``EXPORT_TX_PROPERTY_EXAMPLES``
asks for more (and ``EXPORT_TX_PROPERTY_RANDOM=1`` for new ones) when hunting locally.
"""

from __future__ import annotations

import dataclasses
import decimal
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb

from export_tx import pipeline, storage
from export_tx.catalog import registry
from export_tx.definition import ExportDefinition
from export_tx.sources import PostgresSource, SqliteSource
from export_tx.states import State
from export_tx.store import HeaderStore
from tests.compare import file_values, float32, same

# Hypothesis builds decimals under the current context: wide numerics need more than 28 digits.
decimal.getcontext().prec = 120
EXAMPLES = int(os.environ.get("EXPORT_TX_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("EXPORT_TX_PROPERTY_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    database=None,
)

# -- PostgreSQL ------------------------------------------------------------------------------------

NO_NUL_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8)), ZoneInfo("Europe/Paris")]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | NO_NUL_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NO_NUL_TEXT, inner, max_size=3),
    max_leaves=6,
)


@dataclasses.dataclass(frozen=True)
class PgKind:
    """A PostgreSQL column type: its DDL, a strategy of valid values, and how the test reads it
    back as the value the file must hold (``{c}`` is the column)."""

    ddl: str
    values: st.SearchStrategy[Any]
    read: str = "{c}"
    normalise: Callable[[Any], Any] = lambda v: v


def _numeric(precision: int, scale: int) -> PgKind:
    limit = Decimal("9" * (precision - scale) + ("." + "9" * scale if scale else ""))  # exact, whatever the context
    return PgKind(f"numeric({precision}, {scale})", st.decimals(-limit, limit, places=scale, allow_nan=False))


PG_KINDS: dict[str, PgKind] = {
    "smallint": PgKind("smallint", st.integers(-(2**15), 2**15 - 1)),
    "integer": PgKind("integer", st.integers(-(2**31), 2**31 - 1)),
    "bigint": PgKind("bigint", st.integers(-(2**63), 2**63 - 1)),
    "numeric(12,2)": _numeric(12, 2),
    "numeric(38,10)": _numeric(38, 10),
    "numeric(50,5)": _numeric(50, 5),
    "numeric": PgKind(
        "numeric",
        st.decimals(-(10**12), 10**12, places=6, allow_nan=False) | st.integers(-(10**20), 10**20).map(Decimal),
    ),  # fmt: skip
    "real": PgKind("real", st.floats(width=32), normalise=float32),
    "double": PgKind("double precision", st.floats()),
    "boolean": PgKind("boolean", st.booleans()),
    "text": PgKind("text", NO_NUL_TEXT),
    "varchar(8)": PgKind(
        "varchar(8)", st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=8)
    ),  # fmt: skip
    "bytea": PgKind("bytea", st.binary(max_size=20)),
    "date": PgKind("date", st.dates(), "{c} - DATE '1970-01-01'"),
    "time": PgKind("time", st.times(), "(EXTRACT(EPOCH FROM {c}) * 1000000)::bigint"),
    "timestamp": PgKind("timestamp", st.datetimes(), "(EXTRACT(EPOCH FROM {c}) * 1000000)::bigint"),
    "timestamptz": PgKind(
        "timestamptz",
        st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.sampled_from(ZONES)),
        "(EXTRACT(EPOCH FROM {c}) * 1000000)::bigint",
    ),
    "interval": PgKind(
        "interval",
        st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)),
        "CASE WHEN {c} IS NULL THEN NULL ELSE ARRAY[(EXTRACT(YEAR FROM {c}) * 12 + EXTRACT(MONTH FROM {c}))::bigint, "
        "EXTRACT(DAY FROM {c})::bigint, (EXTRACT(HOUR FROM {c}) * 3600000000 + EXTRACT(MINUTE FROM {c}) * 60000000 "
        "+ EXTRACT(MICROSECOND FROM {c}))::bigint] END",
    ),
    "uuid": PgKind("uuid", st.uuids()),
    "json": PgKind("json", JSON.map(Json), "{c}::text"),
    "jsonb": PgKind("jsonb", JSON.map(Jsonb), "{c}::text"),
    "integer[]": PgKind("integer[]", st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4)),
    "text[]": PgKind("text[]", st.lists(st.none() | NO_NUL_TEXT, max_size=4)),
    "mood": PgKind("prop_mood", st.sampled_from(["sad", "ok", "happy 😀"]), "{c}::text"),
    "inet": PgKind("inet", st.ip_addresses().map(str), "{c}::text"),
}
PG_KEYS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    # Skewed and gappy: hypothesis mixes dense runs, extremes and huge gaps.
    "bigint": ("bigint", st.integers(-(2**63), 2**63 - 1)),
    "integer": ("integer", st.integers(-(2**31), 2**31 - 1) | st.integers(0, 50)),
    "text": ("text", NO_NUL_TEXT),
    "uuid": ("uuid", st.uuids()),
    "date": ("date", st.dates()),
}


def _null_pattern() -> st.SearchStrategy[str]:
    return st.sampled_from(["none", "some", "all"])


@st.composite
def pg_tables(draw: st.DrawFn) -> dict[str, Any]:
    key_kind = draw(st.sampled_from(sorted(PG_KEYS)))
    key_ddl, key_values = PG_KEYS[key_kind]
    kinds = draw(st.lists(st.sampled_from(sorted(PG_KINDS)), min_size=1, max_size=5))
    rows = draw(st.one_of(st.just(0), st.just(1), st.integers(2, 40)))
    keys = draw(st.lists(key_values, min_size=rows, max_size=rows, unique=True))
    columns = []
    for i, kind in enumerate(kinds):
        pattern = draw(_null_pattern())
        values = []
        for _ in range(rows):
            if pattern == "all" or (pattern == "some" and draw(st.booleans())):
                values.append(None)
            else:
                values.append(draw(PG_KINDS[kind].values))
        columns.append((f"c{i}", kind, values))
    batch_size = draw(st.integers(1, 25))
    return {"key": (key_kind, key_ddl, keys), "columns": columns, "batch_size": batch_size}


@pytest.fixture(scope="module")
def pg_source(pg_orders: str) -> Iterator[str]:
    with psycopg.connect(pg_orders, autocommit=True) as conn:
        conn.execute("DROP TYPE IF EXISTS prop_mood CASCADE")
        conn.execute("CREATE TYPE prop_mood AS ENUM ('sad', 'ok', 'happy 😀')")
    yield pg_orders


def _export(definition: ExportDefinition, batch_size: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The product's own steps, as the DAG runs them: plan, every batch, merge."""
    monkeypatch.setitem(registry.definitions(), definition.name, definition)
    st_ = HeaderStore.from_settings()
    tx_id = f"prop_{uuid.uuid4().hex}"
    st_.create(tx_id, definition=definition.name, params={}, batch_size=batch_size, requested_by="hypothesis")
    st_.transition(tx_id, State.RUNNING, "property test")
    for batch_no in pipeline.plan(st_, tx_id):
        pipeline.export_batch(st_, tx_id, batch_no)
    result = pipeline.merge(st_, tx_id)
    header = st_.get(tx_id)
    assert header.state == State.SUCCEEDED and not storage.parts_dir(tx_id).exists()
    return header, result


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


@SETTINGS
@given(table=pg_tables())
def test_postgres_file_equals_source(table: dict[str, Any], pg_source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key_kind, key_ddl, keys = table["key"]
    columns = table["columns"]
    ddl = ", ".join([f"k {key_ddl} PRIMARY KEY"] + [f"{n} {PG_KINDS[kind].ddl}" for n, kind, _ in columns])
    with psycopg.connect(pg_source, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS prop_table")
        conn.execute(f"CREATE TABLE prop_table ({ddl})")
        names = ", ".join(["k"] + [n for n, _, _ in columns])
        marks = ", ".join(["%s"] * (1 + len(columns)))
        rows = [(k, *(values[i] for _, _, values in columns)) for i, k in enumerate(keys)]
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO prop_table ({names}) VALUES ({marks})", rows)
        reads = ", ".join(["k"] + [PG_KINDS[kind].read.format(c=n) for n, kind, _ in columns])
        source = conn.execute(f"SELECT {reads} FROM prop_table ORDER BY k").fetchall()
    definition = ExportDefinition(
        name="property_pg", description="generated", source=PostgresSource("export_source_pg"),
        sql="SELECT * FROM prop_table", key_column="k",
    )  # fmt: skip
    header, result = _export(definition, table["batch_size"], monkeypatch)
    assert header.result_rows == result.rows == len(keys)
    assert header.batches_total == -(-len(keys) // table["batch_size"])
    file = pq.read_table(_local(result.uri))
    assert file.column_names == ["k"] + [n for n, _, _ in columns]
    for index, name in enumerate(file.column_names):
        kind = PG_KINDS[columns[index - 1][1]] if index else None
        expected = [row[index] for row in source]
        if kind is not None:
            expected = [None if v is None else kind.normalise(v) for v in expected]
        exported = file_values(file, name)
        if key_kind == "date" and index == 0:
            expected = [(d - date(1970, 1, 1)).days for d in expected]
        bad = [(i, e, x) for i, (e, x) in enumerate(zip(expected, exported, strict=True)) if not same(e, x)]
        assert not bad, f"{name} ({columns[index - 1][1] if index else key_kind}): {bad[:3]}"


# -- SQLite ----------------------------------------------------------------------------------------

SQLITE_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "INTEGER": st.integers(-(2**63), 2**63 - 1),
    "REAL": st.floats(allow_nan=False),  # SQLite keeps NaN as NULL
    "TEXT": NO_NUL_TEXT,
    "BLOB": st.binary(max_size=20),
    "BOOLEAN": st.sampled_from([0, 1]),
    "DATE": st.dates().map(date.isoformat),
    "TIMESTAMP": st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    "NUMERIC": st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),  # fmt: skip
    "": st.integers(-(2**62), 2**62),  # no declared type: typed by its values
}


@st.composite
def sqlite_tables(draw: st.DrawFn) -> dict[str, Any]:
    text_key = draw(st.booleans())
    rows = draw(st.one_of(st.just(0), st.just(1), st.integers(2, 40)))
    keys = draw(st.lists(NO_NUL_TEXT if text_key else st.integers(-(2**63), 2**63 - 1), min_size=rows,
                         max_size=rows, unique=True))  # fmt: skip
    kinds = draw(st.lists(st.sampled_from(sorted(SQLITE_KINDS)), min_size=1, max_size=5))
    columns = []
    for i, kind in enumerate(kinds):
        pattern = draw(_null_pattern())
        values = [None if pattern == "all" or (pattern == "some" and draw(st.booleans())) else
                  draw(SQLITE_KINDS[kind]) for _ in range(rows)]  # fmt: skip
        columns.append((f"c{i}", kind, values))
    return {"text_key": text_key, "keys": keys, "columns": columns, "batch_size": draw(st.integers(1, 25))}


def _sqlite_expected(kind: str, value: Any) -> Any:
    """The value the file must hold for what SQLite stored."""
    if value is None:
        return None
    if kind == "BOOLEAN":
        return bool(value)
    if kind == "DATE":
        return (date.fromisoformat(value) - date(1970, 1, 1)).days
    if kind == "TIMESTAMP":
        moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if kind == "NUMERIC":
        return float(value)
    return value


@SETTINGS
@given(table=sqlite_tables())
def test_sqlite_file_equals_source(table: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("prop") / "source.db"
    columns = table["columns"]
    with sqlite3.connect(path) as conn:
        key = "k TEXT PRIMARY KEY" if table["text_key"] else "k INTEGER PRIMARY KEY"
        conn.execute(f"CREATE TABLE t ({', '.join([key] + [f'{n} {kind}' for n, kind, _ in columns])})")
        marks = ", ".join(["?"] * (1 + len(columns)))
        rows = [(k, *(values[i] for _, _, values in columns)) for i, k in enumerate(table["keys"])]
        conn.executemany(f"INSERT INTO t VALUES ({marks})", rows)
        source = conn.execute("SELECT * FROM t ORDER BY k").fetchall()
    definition = ExportDefinition(name="property_sqlite", description="generated", source=SqliteSource(str(path)),
                                  sql="SELECT * FROM t", key_column="k")  # fmt: skip
    header, result = _export(definition, table["batch_size"], monkeypatch)
    assert header.result_rows == len(source)
    file = pq.read_table(_local(result.uri))
    for index, name in enumerate(file.column_names):
        kind = columns[index - 1][1] if index else ""
        expected = [_sqlite_expected(kind, row[index]) if index else row[0] for row in source]
        exported = file_values(file, name)
        bad = [(i, e, x) for i, (e, x) in enumerate(zip(expected, exported, strict=True)) if not same(e, x)]
        assert not bad, f"{name} ({kind or 'key'}): {bad[:3]}"


def test_sqlite_columns_null_in_the_first_thousands_of_rows_keep_their_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ADBC SQLite driver types a column by its first values; a column NULL for its first 2,000
    rows and text after must still export (as text), in one batch of 3,000."""
    path = tmp_path / "late.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, late TEXT, stamp TIMESTAMP, blob BLOB)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [(i, None if i <= 2000 else f"v{i}", None if i <= 2500 else f"2025-01-01 00:00:{i % 60:02d}",
              None if i <= 2999 else b"\x00\x01") for i in range(1, 3001)],
        )  # fmt: skip
    definition = ExportDefinition(name="late_nulls", description="late values", source=SqliteSource(str(path)),
                                  sql="SELECT * FROM t", key_column="k")  # fmt: skip
    header, result = _export(definition, 5000, monkeypatch)
    file = pq.read_table(_local(result.uri))
    assert [str(f.type) for f in file.schema] == ["int64", "string", "timestamp[us]", "binary"]
    assert file.column("late").to_pylist()[1999:2001] == [None, "v2001"]
    assert file.column("blob").to_pylist()[-1] == b"\x00\x01" and header.result_rows == 3000
    assert file.column("stamp").to_pylist()[2500] == datetime(2025, 1, 1, 0, 0, 2501 % 60)
