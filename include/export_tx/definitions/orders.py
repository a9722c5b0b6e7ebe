"""Example production export: orders from PostgreSQL, customer e-mail masked on the way out.

No types are declared: PostgreSQL says what each column is (``amount numeric(12,2)`` becomes
``decimal128(12, 2)``, ``timestamptz`` a UTC timestamp). The date filters are written as ranges
(``created_at >= COALESCE(:since, '-infinity')``, not ``:since IS NULL OR …``) so that a day's
export reads the ``created_at`` index instead of the whole table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from export_tx.definition import ExportDefinition
from export_tx.definitions._orders_common import ORDER_PARAMS
from export_tx.sources import PostgresSource

if TYPE_CHECKING:
    import pyarrow as pa

SOURCE_CONN_ID = "export_source_pg"


def mask_email(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``ana.lopez@example.com`` → ``a***@example.com``, vectorised over the whole batch."""
    import pyarrow.compute as pc

    i = batch.schema.get_field_index("customer_email")
    masked = pc.replace_substring_regex(batch.column(i), pattern=r"^([^@])[^@]*@", replacement=r"\1***@")
    return batch.set_column(i, batch.schema.field(i), masked)


DEFINITION = ExportDefinition(
    name="orders",
    description="Orders from the production PostgreSQL (connection export_source_pg); e-mails masked.",
    source=PostgresSource(SOURCE_CONN_ID),
    sql="""
        SELECT order_id, customer_id, customer_email, status, amount, currency, quantity,
               product_sku, country, created_at, updated_at, note
        FROM orders
        WHERE created_at >= COALESCE(CAST(:since AS date), '-infinity')
          AND created_at < COALESCE(CAST(:until AS date) + 1, 'infinity')
          AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))
    """,
    key_column="order_id",
    params=ORDER_PARAMS,
    max_rows=100_000_000,
    retention_days=14,
    retention_days_max=90,
    transform=mask_email,
)
