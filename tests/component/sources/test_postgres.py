"""Sources stream Arrow with bound parameters — and on PostgreSQL really stream (not materialise)."""

from __future__ import annotations

import psycopg
import pytest

from devtools.demo_data import generate_orders_pg
from export_tx.sources import PostgresSource, fetch_all, stream, to_session_settings


def test_values_never_enter_the_sql_text() -> None:
    hostile = "x'); DROP TABLE orders; --"
    text, settings = to_session_settings(
        "SELECT * FROM t WHERE a = :a AND b >= :b AND c = :c AND d IS NULL OR d = :d AND e = :e",
        {"a": hostile, "b": 5, "c": 1.5, "d": None, "e": True},
    )
    assert hostile not in text and "DROP" not in text
    assert text == (
        "SELECT * FROM t WHERE a = current_setting('export_tx.p_a') "
        "AND b >= CAST(current_setting('export_tx.p_b') AS bigint) "
        "AND c = CAST(current_setting('export_tx.p_c') AS double precision) "
        "AND d IS NULL OR d = CAST(NULL AS text) AND e = CAST(current_setting('export_tx.p_e') AS boolean)"
    )
    assert settings == {"export_tx.p_a": hostile, "export_tx.p_b": "5", "export_tx.p_c": "1.5", "export_tx.p_e": "true"}
    with pytest.raises(KeyError, match=":missing has no value"):
        to_session_settings("SELECT :missing", {})


@pytest.fixture(scope="module")
def big_orders(pg_database: str, monkeypatch_module: pytest.MonkeyPatch) -> PostgresSource:
    generate_orders_pg(pg_database, 300_000, "orders_big")
    monkeypatch_module.setenv("AIRFLOW_CONN_BIG_PG", pg_database)
    return PostgresSource("big_pg")


def test_postgres_streams_in_many_batches_with_bound_values(big_orders: PostgresSource, pg_database: str) -> None:
    hostile = "shipped' OR '1'='1"
    sql = "SELECT * FROM orders_big WHERE order_id >= :lo AND (status = :status OR :status2 IS NULL)"
    sizes = []
    with stream(big_orders, sql, {"lo": 1000, "status": "delivered", "status2": "x"}) as reader:
        for batch in reader:
            sizes.append(batch.num_rows)
            assert set(batch.column("status").to_pylist()) == {"delivered"}
    with psycopg.connect(pg_database) as conn:
        (expected,) = conn.execute(
            "SELECT count(*) FROM orders_big WHERE order_id >= 1000 AND status = 'delivered'"
        ).fetchone()  # type: ignore[misc]
    assert sum(sizes) == expected > 100_000
    assert len(sizes) >= 2, "the result must arrive as a stream of batches, not one materialised block"
    # A hostile value is data, never SQL.
    found = fetch_all(big_orders, "SELECT count(*) AS n FROM orders_big WHERE status = :s", {"s": hostile})
    assert found.column("n")[0].as_py() == 0
