"""Demo and benchmark source data, generated inside the database (no rows through Python).

The same deterministic shop orders go into the embedded SQLite demo file and, for tests and
the benchmark, into a PostgreSQL ``orders`` table. Keys have gaps and a skewed spread, so
planning by row count (not key width) matters.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Two years of creation times, spread in key order.
SPAN_SECONDS = 2 * 365 * 24 * 3600

_STATUS_CASE = """CASE (i * 7919) % 20
        WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 2 THEN 'paid' WHEN 3 THEN 'paid'
        WHEN 4 THEN 'shipped' WHEN 5 THEN 'shipped' WHEN 6 THEN 'shipped' WHEN 7 THEN 'cancelled'
        WHEN 8 THEN 'returned' ELSE 'delivered' END"""
_COUNTRY_CASE = """CASE (i * 31) % 8 WHEN 0 THEN 'DE' WHEN 1 THEN 'FR' WHEN 2 THEN 'ES' WHEN 3 THEN 'IT'
        WHEN 4 THEN 'NL' WHEN 5 THEN 'PL' WHEN 6 THEN 'SE' ELSE 'US' END"""
# The columns both generators compute the same way (identical SQL on SQLite and PostgreSQL),
# from customer_id to quantity.
_COMMON_COLUMNS = f"""1 + (i * 7907) % 50000,
                   'customer' || ((i * 7907) % 50000) || '@example.com',
                   {_STATUS_CASE},
                   ((i * 7919) % 100000) / 100.0,
                   CASE WHEN i % 10 = 0 THEN 'USD' ELSE 'EUR' END,
                   1 + (i % 9)"""
# Gappy, skewed keys: dense runs of 10,000 separated by jumps that grow with the key.
_ORDER_ID = "(i * 2 + (i / 10000) * (i / 10000) * 1000)"

DEMO_TABLE_DDL = """
CREATE TABLE demo_orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    customer_email TEXT NOT NULL,
    status TEXT NOT NULL,
    amount REAL NOT NULL,
    currency TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    product_sku TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    note TEXT
)"""


def generate_demo_sqlite(path: Path, rows: int) -> int:
    """Create the demo database with ``rows`` orders unless it already holds exactly that.

    Written to a temporary file and renamed, so an interrupted run never leaves half a table.
    Returns the number of rows in the table.
    """
    path = Path(path)
    if path.exists():
        with sqlite3.connect(path) as conn:
            try:
                (count,) = conn.execute("SELECT count(*) FROM demo_orders").fetchone()
                (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'demo_orders'").fetchone()
            except (sqlite3.DatabaseError, TypeError):
                count, ddl = -1, ""
        if count == rows and ddl.strip() == DEMO_TABLE_DDL.strip():
            return rows
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(DEMO_TABLE_DDL)
        # Only our own constant SQL fragments are formatted in; the sizes are bound.
        conn.execute(
            f"""
            INSERT INTO demo_orders
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?)
            SELECT {_ORDER_ID},
                   {_COMMON_COLUMNS},
                   'SKU-' || printf('%05d', (i * 13) % 20000),
                   {_COUNTRY_CASE},
                   datetime('2025-01-01', '+' || (i * ? / ?) || ' seconds'),
                   datetime('2025-01-01', '+' || (i * ? / ? + 3600 * (i % 72)) || ' seconds'),
                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'gift wrap ' || (i % 5) END
            FROM seq
            """,
            (rows, SPAN_SECONDS, rows, SPAN_SECONDS, rows),
        )
        conn.commit()
        conn.execute("CREATE INDEX demo_orders_created_at ON demo_orders (created_at)")
        conn.commit()
    finally:
        conn.close()
    tmp.replace(path)
    return rows


ORDERS_PG_DDL = """
CREATE TABLE {table} (
    order_id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    customer_email TEXT NOT NULL,
    status TEXT NOT NULL,
    amount NUMERIC(12, 2) NOT NULL,
    currency TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    product_sku TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    note TEXT
)"""


def generate_orders_pg(dsn: str, rows: int, table: str = "orders") -> int:
    """(Re)create a PostgreSQL ``orders`` table with ``rows`` generated orders."""
    import psycopg

    from export_tx.sources import check_identifier

    check_identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(ORDERS_PG_DDL.format(table=table))
        body = f"""
            INSERT INTO {table}
            SELECT {_ORDER_ID},
                   {_COMMON_COLUMNS},
                   'SKU-' || lpad(((i * 13) % 20000)::text, 5, '0'),
                   {_COUNTRY_CASE},
                   timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => (i::bigint * @SPAN / @N)),
                   timestamptz '2025-01-01 00:00:00+00'
                       + make_interval(secs => (i::bigint * @SPAN / @N + 3600 * (i % 72))),
                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'gift wrap ' || (i % 5) END
            FROM generate_series(1, @N::bigint) AS s(i)
            """
        # psycopg placeholders are %(name)s, so escape the modulo operators first.
        query = body.replace("%", "%%").replace("@SPAN", "%(span)s").replace("@N", "%(n)s")
        conn.execute(query, {"span": SPAN_SECONDS, "n": rows})
        conn.execute(f"CREATE INDEX {table}_created_at ON {table} (created_at)")
        conn.execute(f"ANALYZE {table}")
    return rows
