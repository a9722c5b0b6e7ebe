"""Any Airflow SQL connection through its hook, on a real MariaDB server started for the session:
described types, refusals naming the column, bounded streaming with bound values, and values
read back exactly as the server holds them — through both MySQL drivers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from export_tx.columns.typemap import dbapi_column
from export_tx.definition import ExportDefinition
from export_tx.errors import DataNotExportable, DefinitionInvalid
from export_tx.planning import resolve_columns
from export_tx.sources import DbApiSource, fetch_all, stream
from export_tx.sources import dbapi as dbapi_module
from tests.mariadb import MariaDB, mariadb  # noqa: F401 - the session fixture

ROWS: list[tuple[Any, ...]] = [
    (1, 2_147_483_647, 9_223_372_036_854_775_807, Decimal("1234567890123456789012345678.0123456789"), 0.1,
     dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 23, 59, 59, 999_999), dt.timedelta(hours=23, minutes=59,
     seconds=59, microseconds=999_999), "été\nünïcödé ✓ 'quoted'", b"\x00\xff\x10binary"),
    (2, -2_147_483_648, -9_223_372_036_854_775_808, Decimal("-9999999999999999999999999999.9999999999"),
     -1.7976931348623157e308, dt.date(1, 1, 1), dt.datetime(1000, 1, 1, 0, 0, 0, 1), dt.timedelta(0),
     "line1\r\nline2\ttab", b""),
    (3, None, None, None, None, None, None, None, None, None),
    (4, 0, 2**53 + 1, Decimal("0.0000000001"), 1 / 3, dt.date(9999, 12, 31), dt.datetime(9999, 12, 31, 23, 59, 59),
     dt.timedelta(hours=12, microseconds=1), "", bytes(range(256))),
]  # fmt: skip
COLUMNS = "id, i, b, d, f, dt, ts, tm, v, bl"


@pytest.fixture(scope="module")
def loaded(mariadb: MariaDB) -> MariaDB:  # noqa: F811
    conn = mariadb.connect(autocommit=True)
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS typed")
    cur.execute(
        "CREATE TABLE typed (id INT PRIMARY KEY, i INT, b BIGINT, d DECIMAL(38,10), f DOUBLE, dt DATE, "
        "ts DATETIME(6), tm TIME(6), v VARCHAR(200) CHARACTER SET utf8mb4, bl BLOB, bits BIT(3), dur TIME)"
    )
    cur.executemany(f"INSERT INTO typed ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
    cur.execute("DROP TABLE IF EXISTS many")
    cur.execute("CREATE TABLE many (id INT PRIMARY KEY, tag VARCHAR(20))")
    cur.execute("INSERT INTO many SELECT seq, IF(seq % 3 = 0, 'o''brien', 'x') FROM seq_1_to_25000")
    conn.close()
    return mariadb


@pytest.fixture(params=["mysqlclient", "mysql-connector-python"])
def source(request: pytest.FixtureRequest, loaded: MariaDB, monkeypatch: pytest.MonkeyPatch) -> DbApiSource:
    monkeypatch.setenv("AIRFLOW_CONN_MARIA_SRC", loaded.airflow_conn(request.param))
    return DbApiSource("maria_src")


def _definition(source: DbApiSource, sql: str, key: str = "id") -> ExportDefinition:
    return ExportDefinition(name="maria", description="", source=source, sql=sql, key_column=key)


def test_describe_maps_each_type_exactly(source: DbApiSource) -> None:
    assert source.dialect == "mysql" and source.unavailable() is None
    described = source.describe("maria", f"SELECT {COLUMNS} FROM typed WHERE v <> :v", {}, {"v": "a'b"})
    types = {name: dbapi_column(name, t) for name, t in described.columns}
    expected = {
        "id": pa.int32(), "i": pa.int32(), "b": pa.int64(), "f": pa.float64(), "dt": pa.date32(),
        "ts": pa.timestamp("us"), "tm": pa.time64("us"), "v": pa.string(), "bl": pa.binary(),
    }  # fmt: skip
    for name, arrow in expected.items():
        assert types[name].arrow_type == arrow, name
    assert types["d"].rule == "numeric"
    if "MySQLdb" in described.columns[0][1].driver:  # this driver reports the precision
        assert types["d"].arrow_type == pa.decimal128(38, 10)
    else:  # sized from the values at planning, as PostgreSQL's numeric without precision
        assert types["d"].arrow is None and [c.kind for c in types["d"].checks] == ["numeric_abs", "numeric_scale"]


def test_unsupported_type_is_refused_naming_the_column(source: DbApiSource) -> None:
    definition = _definition(source, "SELECT id, bits FROM typed")
    _, problems = resolve_columns(definition, source.describe("maria", definition.sql, {}))
    assert [p.field for p in problems] == ["columns.bits"]
    assert "BIT" in problems[0].message and "cast it in the query" in problems[0].message
    with pytest.raises(DefinitionInvalid) as refused:
        source.describe("maria", "SELECT no_such_column FROM typed", {})
    assert refused.value.errors[0].field == "sql" and "no_such_column" in str(refused.value)


def test_a_duration_time_is_refused_naming_the_column(source: DbApiSource, loaded: MariaDB) -> None:
    conn = loaded.connect(autocommit=True)
    conn.cursor().execute("UPDATE typed SET dur = '-838:59:59' WHERE id = 1")
    conn.close()
    with pytest.raises(DataNotExportable, match="column 'dur'"):
        fetch_all(source, "SELECT id, dur FROM typed", {})


def test_streams_in_bounded_batches_with_bound_values(source: DbApiSource, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbapi_module, "FETCH_ROWS", 1000)
    sizes, ids = [], []
    hostile = "o'brien"  # a quote that would break (or inject into) formatted SQL
    sql = "SELECT id, tag, '100%' AS pct FROM many WHERE id >= :lo AND tag = :tag ORDER BY id"
    with stream(source, sql, {"lo": 10, "tag": hostile}) as reader:
        for batch in reader:
            sizes.append(batch.num_rows)
            assert set(batch.column("tag").to_pylist()) == {hostile}
            assert set(batch.column("pct").to_pylist()) == {"100%"}  # a literal % survives the paramstyle
            ids.extend(batch.column("id").to_pylist())
    assert ids == [i for i in range(10, 25_001) if i % 3 == 0]
    assert max(sizes) == 1000 and len(sizes) == 9, "rows must arrive fetchmany() at a time, never all at once"
    injected = fetch_all(source, "SELECT COUNT(*) AS n FROM many WHERE tag = :t", {"t": "x' OR '1'='1"})
    assert injected.column("n").to_pylist() == [0]


def _server_rows(db: MariaDB) -> list[tuple[Any, ...]]:
    """What the server holds, read by the test's own connection (mysql-connector, text protocol)."""
    conn = db.connect()
    cur = conn.cursor()
    cur.execute(f"SELECT {COLUMNS} FROM typed ORDER BY id")
    rows = [tuple(r) for r in cur.fetchall()]
    conn.close()
    return rows


def test_values_equal_the_server_value_by_value(source: DbApiSource, loaded: MariaDB) -> None:
    table = fetch_all(source, f"SELECT {COLUMNS} FROM typed ORDER BY id", {})
    held = _server_rows(loaded)
    assert held == ROWS  # the server holds what was inserted (the ground truth is not the driver's)
    got = [tuple(r.values()) for r in table.to_pylist()]
    assert len(got) == len(ROWS)
    for row, expected in zip(got, ROWS, strict=True):
        for name, value, want in zip(COLUMNS.split(", "), row, expected, strict=True):
            if name == "tm" and want is not None:
                want = (dt.datetime.min + want).time()  # TIME read as a time of day
            if name == "d" and isinstance(value, str):  # unknown precision: the exact text
                value = Decimal(value)
            assert value == want and type(value) is type(want) or (value is None and want is None), (name, value)
    assert table.column("b").type == pa.int64() and table.column("ts").type == pa.timestamp("us")


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AIRFLOW_CONN_NOT_DEFINED_HERE", raising=False)
    yield


def test_an_undefined_connection_is_unavailable(no_connections: None) -> None:
    reason = DbApiSource("not_defined_here").unavailable()
    assert reason is not None and "not_defined_here" in reason
