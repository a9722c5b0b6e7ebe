"""A definition file written for an earlier version (a whole `schema=`), kept unchanged but its name:
it must keep working (tests/dag/test_definitions.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from export_tx.definition import ExportDefinition
from export_tx.definitions._orders_common import ORDER_PARAMS
from export_tx.sources import SqliteSource

if TYPE_CHECKING:
    import pyarrow as pa


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("order_id", pa.int64()),
            ("customer_id", pa.int64()),
            ("customer_email", pa.string()),
            ("status", pa.string()),
            ("amount", pa.float64()),
            ("currency", pa.string()),
            ("quantity", pa.int64()),
            ("product_sku", pa.string()),
            ("country", pa.string()),
            ("created_at", pa.timestamp("us")),
            ("updated_at", pa.timestamp("us")),
            ("note", pa.string()),
        ]
    )


DEFINITION = ExportDefinition(
    name="legacy_demo_orders",
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
    schema=_schema,
)
