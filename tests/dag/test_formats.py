"""Whole exports in CSV and JSON Lines (plain and gzip) on SQLite and PostgreSQL: the file read
back with Python's csv and json modules equals the source value by value, in key order, with the
header line exactly once; a bad ``format`` is refused before any work."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_tx import formats, storage
from export_tx.states import State
from tests.helpers import DEMO_COLUMNS, demo_source_rows, file_sha256, local_path, run_export, store

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")

NAMES = [c.strip() for c in DEMO_COLUMNS.split(",")]
TEXT_FORMATS = ["csv", "csv.gz", "jsonl", "jsonl.gz"]


def _read(path: Path, name: str) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("utf-8")
    if name.startswith("jsonl"):
        return [json.loads(line, parse_float=Decimal) for line in text.splitlines()]
    records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert records[0] == NAMES  # the header line
    assert sum(r == NAMES for r in records) == 1, "the header exactly once"
    return [dict(zip(NAMES, r, strict=True)) for r in records[1:]]


def _same(cell: Any, want: Any, csv_file: bool) -> bool:
    """The file's text (or JSON value) states ``want`` exactly."""
    if want is None:
        return cell == ("" if csv_file else None)
    if isinstance(want, bool):
        return cell == (("true" if want else "false") if csv_file else want)
    if isinstance(want, int):
        return (int(cell) if csv_file else cell) == want and (csv_file or type(cell) is int)
    if isinstance(want, float):
        return float(cell) == want
    if isinstance(want, Decimal):
        return isinstance(cell, str) and cell == format(want, "f")  # the exact decimal text, scale kept
    if isinstance(want, datetime):
        return isinstance(cell, str) and "T" in cell and datetime.fromisoformat(cell) == want
    return cell == want


def _exported(run: Any, name: str, expected_rows: int) -> list[dict[str, Any]]:
    assert run.state == "success"
    header = store().get(run.run_id)
    assert header.state == State.SUCCEEDED, header.error
    assert header.format == name
    assert header.result_rows == header.rows_written == expected_rows
    path = local_path(header.result_uri or "")
    assert path.name.endswith(formats.get(name).suffix)
    assert file_sha256(path) == header.result_sha256 and path.stat().st_size == header.result_bytes
    assert not storage.parts_dir(run.run_id).exists()
    rows = _read(path, name)
    assert len(rows) == expected_rows
    return rows


def _assert_equal(rows: list[dict[str, Any]], source: list[tuple[Any, ...]], name: str) -> None:
    csv_file = name.startswith("csv")
    mismatches = []
    for got, want in zip(rows, source, strict=True):
        assert list(got) == NAMES  # every column, in the query's order
        for column, value in zip(NAMES, want, strict=True):
            if not _same(got[column], value, csv_file):
                mismatches.append((column, got[column], value))
    assert mismatches == []


@pytest.mark.parametrize("name", TEXT_FORMATS)
def test_sqlite_export_in_each_text_format_equals_the_source(name: str, demo_db: Path) -> None:
    params = {"status": "shipped", "since": "2025-03-01", "until": "2026-06-30"}
    run = run_export({"definition": "demo_orders", "params": params, "batch_size": 1000, "format": name})
    source = demo_source_rows(
        demo_db, "status = ? AND created_at >= ? AND created_at < date(?, '+1 day')", tuple(params.values())
    )
    assert len(source) > 2000  # several batches, so several parts merged
    rows = _exported(run, name, len(source))
    assert store().get(run.run_id).batches_total == -(-len(source) // 1000)
    _assert_equal(rows, source, name)
    assert [int(r["order_id"]) for r in rows] == [s[0] for s in source]  # key order


@pytest.fixture
def postgres_everything(pg_orders: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Source and header store both on the real PostgreSQL (as in test_export_runs)."""
    monkeypatch.setenv("AIRFLOW_CONN_EXPORT_TX_STORE", pg_orders)
    monkeypatch.setenv("EXPORT_TX_STORE_CONN_ID", "export_tx_store")
    yield pg_orders


@pytest.mark.parametrize("name", TEXT_FORMATS)
def test_postgres_export_in_each_text_format_equals_the_source(name: str, postgres_everything: str) -> None:
    run = run_export({"definition": "orders", "params": {"since": "2025-10-01"}, "batch_size": 2500, "format": name})
    with psycopg.connect(postgres_everything) as conn:
        source = conn.execute(
            r"""SELECT order_id, customer_id, regexp_replace(customer_email, '^([^@])[^@]*@', '\1***@'),
                       status, amount, currency, quantity, product_sku, country, created_at, updated_at, note
                FROM orders WHERE created_at >= DATE '2025-10-01' ORDER BY order_id"""
        ).fetchall()
    assert "postgresql" in store().url
    rows = _exported(run, name, len(source))
    assert store().get(run.run_id).batches_total >= 2
    assert isinstance(source[0][4], Decimal)  # numeric(12,2): compared as its exact text
    _assert_equal(rows, source, name)
    assert rows[0]["created_at"].endswith("Z")  # timestamptz: UTC, said so


def test_a_bad_format_is_refused_before_any_work() -> None:
    from export_tx import pipeline
    from export_tx.errors import RequestInvalid

    # The DAG's Param lists the formats (Airflow refuses others at trigger time); the product's own
    # check is the same for every door: the run's first step.
    tx_id = "manual__bad_format_1"
    with pytest.raises(RequestInvalid) as refused:
        pipeline.begin(store(), tx_id, {"definition": "demo_orders", "format": "xlsx" * 1000}, "dag_test")
    header = store().get(tx_id)
    assert header.state == State.FAILED
    assert "format: 'xlsxxlsxxl… is not a file format; allowed: parquet, csv, csv.gz, jsonl, jsonl.gz" in (
        header.error or ""
    )
    assert "xlsx" * 4 not in (header.error or "") and "xlsx" * 4 not in str(refused.value)
    assert header.batches_total is None and store().plan(tx_id) == []
    assert header.format == "parquet"  # the refused value is not stored either
    assert not storage.tx_root(tx_id).exists()
