"""A team's Python definition file with a pandas transform, loaded from its own folder, exported
whole with ``dag.test``: the file equals the demo source with the transform applied, value by value."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from export_tx.catalog import registry
from export_tx.states import State
from tests.helpers import demo_source_rows, export_dag, file_sha256, local_path, run_export, store

REPO = Path(__file__).resolve().parents[2]

DEFINITION_FILE = '''
"""Demo orders, e-mails masked, statuses upper-cased and cancelled orders left out, in pandas."""

from __future__ import annotations

from typing import Any

from export_tx.definition import ExportDefinition
from export_tx.definitions._orders_common import ORDER_PARAMS
from export_tx.sources import SqliteSource


def masked(frame: Any) -> Any:
    frame["customer_email"] = frame["customer_email"].str.replace(r"^([^@])[^@]*@", r"\\1***@", regex=True)
    frame["status"] = frame["status"].str.upper()
    return frame[frame["status"] != "CANCELLED"]


DEFINITION = ExportDefinition(
    name="pandas_demo_orders",
    description="Demo orders with a pandas transform.",
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
    pandas_transform=masked,
)
'''


@pytest.fixture
def team_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shipped test definitions plus a folder holding the pandas one; the DAG is parsed again so
    its ``definition`` Param lists the new name, and again after the test without it."""
    folder = tmp_path / "team"
    folder.mkdir()
    (folder / "pandas_demo_orders.py").write_text(textwrap.dedent(DEFINITION_FILE))
    monkeypatch.setenv("EXPORT_TX_DEFINITIONS_PATH", f"{REPO / 'tests' / 'definitions'}{os.pathsep}{folder}")
    registry.clear_cache()
    export_dag.cache_clear()
    yield folder
    registry.clear_cache()
    export_dag.cache_clear()


@pytest.mark.usefixtures("airflow_db")
def test_a_pandas_transform_exports_the_source_transformed_value_by_value(team_folder: Path, demo_db: Path) -> None:
    assert registry.get("pandas_demo_orders").origin == str(team_folder / "pandas_demo_orders.py")
    run = run_export({"definition": "pandas_demo_orders", "params": {}, "batch_size": 5000})
    header = store().get(run.run_id)
    assert run.state == "success" and header.state == State.SUCCEEDED, header.error
    source = demo_source_rows(demo_db)
    kept = [row for row in source if row[3] != "cancelled"]
    assert header.batches_total > 1 and 0 < header.result_rows == len(kept) < len(source)
    path = local_path(header.result_uri or "")
    assert file_sha256(path) == header.result_sha256
    table = pq.read_table(path)
    assert [str(t) for t in table.schema.types] == [
        "int64", "int64", "string", "string", "double", "string", "int64", "string", "string",
        "timestamp[us]", "timestamp[us]", "string",
    ]  # fmt: skip
    expected = []
    for row in kept:
        email = None if row[2] is None else re.sub(r"^([^@])[^@]*@", r"\1***@", row[2])
        status = None if row[3] is None else row[3].upper()
        expected.append((*row[:2], email, status, *row[4:]))
    assert [tuple(r.values()) for r in table.to_pylist()] == expected
    assert any(e[2] != k[2] for e, k in zip(expected, kept, strict=True))  # the mask did something
