"""Planning by row count against real SQLite and PostgreSQL sources with skewed, gappy keys."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from export_tx.definition import ExportDefinition
from export_tx.errors import ExportError, TooManyRows
from export_tx.planning import plan_export
from export_tx.sources import PostgresSource, SqliteSource, fetch_all


def skewed_keys() -> list[int]:
    """Dense runs, huge gaps and a geometric tail: a key-width split would be badly uneven."""
    keys = list(range(1, 5_001))  # dense
    keys += [10_000_000 + i * 1_000 for i in range(3_000)]  # sparse
    keys += [2**40 + i for i in range(500)]  # after a huge gap
    keys += [2**50 + 3**i for i in range(30)]  # geometric tail
    return keys


def _definition(source: SqliteSource | PostgresSource, max_rows: int = 1_000_000) -> ExportDefinition:
    return ExportDefinition(
        name="skewed",
        description="test",
        source=source,
        sql="SELECT id, payload FROM skewed WHERE (:tag IS NULL OR payload = :tag)",
        key_column="id",
        params={"tag": {"type": "string"}},
        max_rows=max_rows,
    )


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> SqliteSource:
    path = Path(tmp_path_factory.mktemp("skewed")) / "skewed.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE skewed (id INTEGER PRIMARY KEY, payload TEXT)")
        conn.executemany("INSERT INTO skewed VALUES (?, ?)", [(k, f"t{k % 3}") for k in skewed_keys()])
    return SqliteSource(str(path))


@pytest.fixture(scope="module")
def pg_source(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS skewed")
        conn.execute("CREATE TABLE skewed (id BIGINT PRIMARY KEY, payload TEXT)")
        with conn.cursor().copy("COPY skewed (id, payload) FROM STDIN") as copy:
            for k in skewed_keys():
                copy.write_row((k, f"t{k % 3}"))
    monkeypatch_module.setenv("AIRFLOW_CONN_SKEWED_PG", pg_database)
    return PostgresSource("skewed_pg")


@pytest.fixture(params=["sqlite", "postgresql"])
def source(request: pytest.FixtureRequest) -> SqliteSource | PostgresSource:
    return request.getfixturevalue("sqlite_source" if request.param == "sqlite" else "pg_source")


def _count_in_range(source: SqliteSource | PostgresSource, lo: int, hi: int | None, tag: str | None) -> int:
    definition = _definition(source)
    upper = "" if hi is None else " AND id < :hi"
    sql = f"SELECT COUNT(*) AS n FROM ({definition.sql}) AS s WHERE id >= :lo{upper}"
    values = {"tag": tag, "lo": lo, **({} if hi is None else {"hi": hi})}
    return int(fetch_all(source, sql, values).column("n")[0].as_py())


@pytest.mark.parametrize(("batch_size", "tag"), [(1_000, None), (777, None), (1_000, "t1"), (2_500, "t2")])
def test_batches_are_even_by_count(source: SqliteSource | PostgresSource, batch_size: int, tag: str | None) -> None:
    keys = skewed_keys()
    expected_total = len([k for k in keys if tag is None or f"t{k % 3}" == tag])
    plan = plan_export(_definition(source), {"tag": tag} if tag else {}, batch_size, max_batches=200)
    assert plan.total_rows == expected_total
    assert sum(b.planned_rows for b in plan.batches) == expected_total
    assert len(plan.batches) == -(-expected_total // batch_size)
    for batch in plan.batches[:-1]:
        assert abs(batch.planned_rows - batch_size) <= batch_size * 0.10
    # The stored ranges really hold what was planned (the source agrees, batch by batch).
    for batch in plan.batches:
        assert _count_in_range(source, batch.lo, batch.hi, tag) == batch.planned_rows


def test_too_many_batches_grow_the_batch_size(source: SqliteSource | PostgresSource) -> None:
    plan = plan_export(_definition(source), {}, 1_000, max_batches=4)
    assert len(plan.batches) == 4
    assert plan.batch_size == -(-len(skewed_keys()) // 4)
    assert "grown from 1,000" in plan.note


def test_over_max_rows_is_refused(source: SqliteSource | PostgresSource) -> None:
    with pytest.raises(TooManyRows, match=r"matches 8,530 rows, over the 100 allowed.*allowed: tag"):
        plan_export(_definition(source, max_rows=100), {}, 1_000, max_batches=200)


def test_zero_rows_plan_no_batch(source: SqliteSource | PostgresSource) -> None:
    plan = plan_export(_definition(source), {"tag": "none"}, 1_000, max_batches=200)
    assert plan.batches == [] and plan.total_rows == 0


def test_null_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "nulls.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE skewed (id INTEGER, payload TEXT)")
        conn.executemany("INSERT INTO skewed VALUES (?, ?)", [(1, "a"), (None, "b")])
    with pytest.raises(ExportError, match="1 matching rows have no 'id'"):
        plan_export(_definition(SqliteSource(str(path))), {}, 1_000, max_batches=10)


@pytest.fixture(scope="module")
def spread_source(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    """Keys that thin out as they grow (``i + i²``), as order ids of a growing shop do not, but a
    histogram of the range still splits evenly."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS spread")
        conn.execute("CREATE TABLE spread (id BIGINT PRIMARY KEY, payload TEXT)")
        conn.execute("INSERT INTO spread SELECT i + i * i, 't' || (i % 3) FROM generate_series(1, 20000) AS i")
    monkeypatch_module.setenv("AIRFLOW_CONN_SPREAD_PG", pg_database)
    return PostgresSource("spread_pg")


def test_an_integer_key_is_split_from_a_histogram_without_numbering_the_rows(
    spread_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export_tx import planning

    def no_numbering(*_: object) -> str:
        raise AssertionError("the rows were numbered in key order: the histogram was not used")

    monkeypatch.setattr(planning, "starts_sql", no_numbering)
    definition = ExportDefinition(name="spread", description="test", source=spread_source,
                                  sql="SELECT id, payload FROM spread WHERE (:tag IS NULL OR payload = :tag)",
                                  key_column="id", params={"tag": {"type": "string"}}, max_rows=1_000_000)  # fmt: skip
    plan = plan_export(definition, {"tag": "t1"}, 1_000, max_batches=200)
    expected = len([i for i in range(1, 20_001) if i % 3 == 1])
    assert plan.total_rows == expected and len(plan.batches) == -(-expected // 1_000)
    assert sum(b.planned_rows for b in plan.batches) == expected
    assert max(b.planned_rows for b in plan.batches) <= 1.25 * expected / len(plan.batches)
    # Contiguous, half-open ranges from the first key, and the source agrees with every count.
    assert [b.hi for b in plan.batches[:-1]] == [b.lo for b in plan.batches[1:]] and plan.batches[-1].hi is None
    with psycopg.connect(spread_source.uri()) as conn:
        for b in plan.batches:
            upper, values = ("", (b.lo,)) if b.hi is None else (" AND id < %s", (b.lo, b.hi))
            found = conn.execute(f"SELECT count(*) FROM spread WHERE payload = 't1' AND id >= %s{upper}", values)
            assert found.fetchone() == (b.planned_rows,)
    assert plan.batches[0].lo == 2  # i = 1 is tag t1: the first key


def test_a_key_bunched_in_a_few_values_falls_back_to_numbering(
    pg_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export_tx import planning

    numbered: list[str] = []
    real = planning.starts_sql
    monkeypatch.setattr(planning, "starts_sql", lambda *a: numbered.append("yes") or real(*a))
    plan = plan_export(_definition(pg_source), {}, 1_000, max_batches=200)
    assert numbered == ["yes"]  # the skewed keys put nearly every row in the histogram's first bucket
    assert [b.planned_rows for b in plan.batches[:-1]] == [1_000] * (len(plan.batches) - 1)


@pytest.fixture(scope="module")
def numbers_source(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    """An integer key over a wide range, a numeric without precision whose largest value, most
    decimal places and NaN sit in different buckets of the key's histogram."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS numbers")
        conn.execute("CREATE TABLE numbers (id BIGINT PRIMARY KEY, amount NUMERIC, ints INT[], tag TEXT)")
        conn.execute("INSERT INTO numbers SELECT i * 1000, i % 97, ARRAY[i], 'plain' FROM generate_series(1, 30000) i")
        conn.execute("UPDATE numbers SET amount = -123456789012.5 WHERE id = 1000")  # the first bucket
        conn.execute("UPDATE numbers SET amount = 0.000001 WHERE id = 15000000")  # the middle
        conn.execute("UPDATE numbers SET amount = 'NaN', tag = 'nan' WHERE id = 30000000")  # the last
        conn.execute("UPDATE numbers SET ints = ARRAY[[1, 2], [3, 4]], tag = 'nested' WHERE id = 29000000")
    monkeypatch_module.setenv("AIRFLOW_CONN_NUMBERS_PG", pg_database)
    return PostgresSource("numbers_pg")


def _numbers(source: PostgresSource, columns: str = "id, amount, tag") -> ExportDefinition:
    return ExportDefinition(name="numbers", description="test", source=source,
                            sql=f"SELECT {columns} FROM numbers WHERE tag <> :skip",
                            key_column="id", params={"skip": {"type": "string"}},
                            max_rows=1_000_000)  # fmt: skip


def test_an_integer_key_is_counted_checked_and_split_in_one_pass(
    numbers_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, integer key: the key's range, then one grouping pass counts the rows, checks every
    column (per bucket, combined) and splits the batches — no counting pass, no numbering pass."""
    from export_tx import planning

    passes: list[str] = []
    real_fetch = planning.fetch_all

    def fetch(source: object, sql: str, *rest: object) -> object:
        passes.append(sql.split(" AS ")[0].replace("\n", " ")[:40])
        return real_fetch(source, sql, *rest)  # type: ignore[arg-type]

    def forbidden(*_: object) -> str:
        raise AssertionError("a pass of its own was used")

    monkeypatch.setattr(planning, "fetch_all", fetch)
    monkeypatch.setattr(planning, "count_sql", forbidden)
    monkeypatch.setattr(planning, "starts_sql", forbidden)
    plan = plan_export(_numbers(numbers_source), {"skip": "nan"}, 3_000, max_batches=200)
    assert len(passes) == 2 and passes[0].startswith("SELECT MIN(")
    assert plan.total_rows == 29_999 and sum(b.planned_rows for b in plan.batches) == 29_999
    assert len(plan.batches) == 10 and max(b.planned_rows for b in plan.batches) <= 1.25 * 3_000
    amount = next(c for c in plan.schema.columns if c.name == "amount")
    # 12 digits before the point (the first bucket) and 6 after (the middle one): decimal(38,6).
    assert amount.arrow_type == pa.decimal128(38, 6)
    with psycopg.connect(numbers_source.uri()) as conn:
        for b in plan.batches:
            upper, values = ("", (b.lo,)) if b.hi is None else (" AND id < %s", (b.lo, b.hi))
            found = conn.execute(f"SELECT count(*) FROM numbers WHERE tag <> 'nan' AND id >= %s{upper}", values)
            assert found.fetchone() == (b.planned_rows,)


@pytest.mark.parametrize(
    ("columns", "skip", "refusal"),
    [
        ("id, amount", "nested", "holds NaN"),  # in the last bucket only
        ("id, ints", "nan", "multi-dimensional arrays"),  # one bucket of 16,384
    ],
)
def test_a_check_failing_in_one_bucket_refuses_the_export(
    numbers_source: PostgresSource, columns: str, skip: str, refusal: str
) -> None:
    from export_tx.errors import DataNotExportable

    with pytest.raises(DataNotExportable, match=refusal):
        plan_export(_numbers(numbers_source, columns), {"skip": skip}, 3_000, max_batches=200)


def test_null_keys_are_counted_in_the_same_pass_on_postgres(pg_database: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS nullkeys")
        conn.execute("CREATE TABLE nullkeys AS SELECT CASE WHEN i % 10 = 0 THEN NULL ELSE i END AS id "
                     "FROM generate_series(1, 5000) i")  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_NULLKEYS_PG", pg_database)
    definition = ExportDefinition(name="nullkeys", description="test", source=PostgresSource("nullkeys_pg"),
                                  sql="SELECT id FROM nullkeys", key_column="id", max_rows=1_000_000)  # fmt: skip
    with pytest.raises(ExportError, match="500 matching rows have no 'id'"):
        plan_export(definition, {}, 1_000, max_batches=10)


def test_a_slow_key_range_gives_way_to_the_counting_pass(
    numbers_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where PostgreSQL would walk the key's index a long way (a selective filter), the range probe
    is cancelled after RANGE_PROBE_SECONDS and the counting pass finds the range instead."""
    from export_tx import planning

    real_range = planning.range_sql
    counted: list[str] = []
    real_count = planning.count_sql
    monkeypatch.setattr(
        planning, "range_sql", lambda *a: real_range(*a).replace("SELECT MIN", "SELECT pg_sleep(5), MIN")
    )
    monkeypatch.setattr(planning, "count_sql", lambda *a, **k: counted.append("yes") or real_count(*a, **k))
    monkeypatch.setattr(planning, "starts_sql", lambda *_: pytest.fail("the rows were numbered"))
    started = time.monotonic()
    plan = plan_export(_numbers(numbers_source), {"skip": "nan"}, 3_000, max_batches=200)
    assert time.monotonic() - started < 4  # the probe was cancelled, not waited for
    assert counted == ["yes"] and plan.total_rows == 29_999 and len(plan.batches) == 10
    assert max(b.planned_rows for b in plan.batches) <= 1.25 * 3_000  # from a histogram, counted after
    assert sum(b.planned_rows for b in plan.batches) == 29_999


@pytest.fixture(scope="module")
def days_source(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    """Orders-like: the key grows with the day, so a day's rows sit in the middle of the key's
    index (a walk from either end passes every other day's rows); statistics analyzed."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS days")
        conn.execute("CREATE TABLE days (id BIGINT PRIMARY KEY, day INT NOT NULL, note TEXT)")
        conn.execute("INSERT INTO days SELECT i * 3, i / 1000, 'n' || i FROM generate_series(1, 60000) i")
        conn.execute("CREATE INDEX days_day ON days (day)")
        conn.execute("ANALYZE days")
    monkeypatch_module.setenv("AIRFLOW_CONN_DAYS_PG", pg_database)
    return PostgresSource("days_pg")


def _days(source: PostgresSource) -> ExportDefinition:
    return ExportDefinition(name="days", description="test", source=source,
                            sql="SELECT id, day, note FROM days WHERE day = :day", key_column="id",
                            params={"day": {"type": "integer"}}, max_rows=1_000_000)  # fmt: skip


def _day_rows(source: PostgresSource, day: int) -> tuple[int, int]:
    with psycopg.connect(source.uri()) as conn:
        found = conn.execute("SELECT count(*), min(id) FROM days WHERE day = %s", (day,)).fetchone()
    assert found is not None
    return found[0], found[1]


def test_an_export_expected_to_fit_one_batch_is_counted_in_one_pass_without_the_key_range(
    days_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's own estimate (EXPLAIN, nothing read) says a day's rows make one automatic
    batch: the one counting pass plans it, and the key's range — a walk through the other days'
    keys — is never asked."""
    from export_tx import planning

    definition = _days(days_source)
    rows, first = _day_rows(days_source, 30)
    estimated = planning.describe(definition, definition.bind_values({"day": 30})).estimated_rows
    assert estimated is not None and rows / 2 <= estimated <= rows * 2  # the planner's, from statistics
    passes: list[str] = []
    real_fetch = planning.fetch_all

    def fetch(source: object, sql: str, *rest: object) -> object:
        passes.append(sql)
        return real_fetch(source, sql, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(planning, "fetch_all", fetch)
    monkeypatch.setattr(planning, "range_sql", lambda *_: pytest.fail("the key's range was asked"))
    plan = plan_export(definition, {"day": 30}, None, max_batches=200, slots=2)
    assert len(passes) == 1 and plan.total_rows == rows == 1_000
    assert [(b.lo, b.hi, b.planned_rows) for b in plan.batches] == [(first, None, rows)]


def test_an_estimate_too_low_costs_a_pass_never_the_plan(
    days_source: PostgresSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the estimate says one batch and the rows need several, the histogram is counted after
    the counting pass: exact, even batches all the same."""
    import dataclasses

    from export_tx import planning

    real_describe = planning.describe
    monkeypatch.setattr(planning, "describe",
                        lambda *a: dataclasses.replace(real_describe(*a), estimated_rows=1))  # fmt: skip
    monkeypatch.setattr(planning, "range_sql", lambda *_: pytest.fail("the key's range was asked"))
    rows, _ = _day_rows(days_source, 30)
    plan = plan_export(_days(days_source), {"day": 30}, 100, max_batches=200)
    assert plan.total_rows == rows and len(plan.batches) == 10
    assert max(b.planned_rows for b in plan.batches) <= 1.25 * 100
    with psycopg.connect(days_source.uri()) as conn:
        for b in plan.batches:
            upper, values = ("", (b.lo,)) if b.hi is None else (" AND id < %s", (b.lo, b.hi))
            found = conn.execute(f"SELECT count(*) FROM days WHERE day = 30 AND id >= %s{upper}", values)
            assert found.fetchone() == (b.planned_rows,)
