"""A text format through the real stack: requested through /exports, downloaded with its media type
and file name, and equal to the source, value by value."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import httpx

from tests.e2e.conftest import terminal, tx_url, wait_status

API = "/exports/v1"


def _source(demo_db: Path, status: str) -> list[dict[str, object]]:
    with sqlite3.connect(demo_db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM demo_orders WHERE status = ? ORDER BY order_id", (status,)).fetchall()
    return [dict(r) for r in rows]


def _export(analyst: httpx.Client, fmt: str) -> tuple[dict[str, object], httpx.Response]:
    body = {
        "definition": "demo_orders",
        "params": {"status": "shipped"},
        "batch_size": 1000,
        "format": fmt,
        "force": True,
    }
    answer = analyst.post(f"{API}/transactions", json=body)
    assert answer.status_code == 202, answer.text
    final = wait_status(analyst, answer.json()["id"], terminal)
    assert final["state"] == "SUCCEEDED", final
    assert final["format"] == fmt and final["progress"]["batches_total"] > 1
    download = analyst.get(tx_url(str(final["id"])) + "/download")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == final["result"]["sha256"]  # type: ignore[index]
    return final, download


def test_csv_gz_download_is_gzip_of_one_header_and_every_source_row(
    clients: dict[str, httpx.Client], demo_db: Path
) -> None:
    final, download = _export(clients["analyst"], "csv.gz")
    assert download.headers["content-type"] == "application/gzip"
    assert download.headers["content-disposition"].endswith('.csv.gz"')
    text = gzip.decompress(download.content).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    source = _source(demo_db, "shipped")
    assert rows[0] == list(source[0].keys())  # the header once, the query's column names in order
    assert len(rows) - 1 == len(source) == final["result"]["rows"]  # type: ignore[index]
    header = rows[0]
    for got, want in zip(rows[1:], source, strict=True):
        record = dict(zip(header, got, strict=True))
        assert int(record["order_id"]) == want["order_id"] and int(record["quantity"]) == want["quantity"]
        assert float(record["amount"]) == want["amount"]  # REAL: the shortest text that reads back equal
        assert record["customer_email"] == want["customer_email"] and record["status"] == "shipped"
        # NULL is an empty unquoted field; the demo's notes are NULL or text, never empty text.
        assert record["note"] == ("" if want["note"] is None else want["note"])
        # TIMESTAMP text in SQLite ("2025-01-01 00:00:00") is ISO 8601 with a T in the file.
        assert record["created_at"].replace("T", " ").startswith(str(want["created_at"])[:19])


def test_jsonl_download_has_its_media_type_and_equals_the_source(
    clients: dict[str, httpx.Client], demo_db: Path
) -> None:
    final, download = _export(clients["analyst"], "jsonl")
    assert download.headers["content-type"].startswith("application/x-ndjson")
    assert download.headers["content-disposition"].endswith('.jsonl"')
    lines = download.content.decode("utf-8").splitlines()
    source = _source(demo_db, "shipped")
    assert len(lines) == len(source) == final["result"]["rows"]  # type: ignore[index]
    for line, want in zip(lines, source, strict=True):
        got = json.loads(line)
        assert list(got) == list(want)  # every column, in the query's order
        for column in ("order_id", "customer_id", "customer_email", "amount", "quantity", "note"):
            assert got[column] == want[column], column
