"""The demo export: orders from the embedded SQLite database that ``make demo`` generates.

No types are declared: SQLite says what each column is (``TIMESTAMP`` columns become timestamps).
"""

from __future__ import annotations

from export_tx.definition import ExportDefinition
from export_tx.definitions._orders_common import ORDER_PARAMS
from export_tx.sources import SqliteSource

DEFINITION = ExportDefinition(
    name="demo_orders",
    description="Orders of the demo shop (embedded SQLite), optionally by creation date and status.",
    source=SqliteSource(),
    sql="""
        SELECT order_id, customer_id, customer_email, status, amount, currency, quantity,
               product_sku, country, created_at, updated_at, note
        FROM demo_orders
        WHERE (:since IS NULL OR created_at >= :since)
          AND (:until IS NULL OR created_at < date(:until, '+1 day'))
          AND (:status IS NULL OR status = :status)
    """,
    key_column="order_id",
    params=ORDER_PARAMS,
    max_rows=20_000_000,
    retention_days=7,
    retention_days_max=30,
)
