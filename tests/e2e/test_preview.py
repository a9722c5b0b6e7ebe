"""Try before you export: ``GET /exports/v1/definitions/{name}/preview`` and ``export-tx preview``
against the real api-server — counts, plan, column types and first rows, nothing written."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from devtools.stack import AirflowStack
from export_tx import storage
from tests.helpers import store

pytestmark = pytest.mark.stack
API = "/exports/v1"


def _preview(client: httpx.Client, name: str, **query: object) -> httpx.Response:
    return client.get(f"{API}/definitions/{name}/preview", params=query, timeout=60)


def _folders() -> set[str]:
    root = Path(os.environ["EXPORT_TX_STORAGE_URI"].removeprefix("file://"))
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _new_unknown_folders(before: set[str]) -> set[str]:
    """Folders created since ``before`` that belong to no transaction (a preview leaves none)."""
    known = {storage.tx_folder_name(h.id) for h in store().list_headers(limit=100_000)[0]}
    return _folders() - before - known


def test_preview_of_the_demo_shows_counts_plan_types_and_first_rows(
    clients: dict[str, httpx.Client], demo_db: Path
) -> None:
    bob = clients["bob"]  # nobody else's exports run as bob meanwhile
    before = bob.get(f"{API}/transactions", params={"limit": 1}).json()["total_entries"]
    folders = _folders()
    answer = _preview(bob, "demo_orders", status="shipped", since="2025-06-01", batch_size=2000, rows=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    with sqlite3.connect(demo_db) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM demo_orders WHERE status = 'shipped' AND created_at >= '2025-06-01'"
        ).fetchone()
        first = conn.execute(
            "SELECT order_id, amount, created_at, note FROM demo_orders WHERE status = 'shipped' "
            "AND created_at >= '2025-06-01' ORDER BY order_id LIMIT 3"
        ).fetchall()
    assert body["rows"] == count and body["plan"]["batches"] == -(-count // 2000)
    assert body["plan"]["ranges"][0]["rows"] == 2000 and body["params"] == {"status": "shipped", "since": "2025-06-01"}
    columns = {c["name"]: c for c in body["columns"]}
    assert columns["created_at"]["source_type"] == "TIMESTAMP" and columns["created_at"]["type"] == "timestamp[us]"
    assert columns["order_id"]["type"] == "int64" and columns["amount"]["type"] == "double"
    # Timestamps as the file's microsecond text, the rest as they are.
    assert [(r["order_id"], r["amount"], r["created_at"], r["note"]) for r in body["sample"]] == [
        (order_id, amount, f"{created_at}.000000", note) for order_id, amount, created_at, note in first
    ]
    # Nothing was written: no transaction, no file.
    assert bob.get(f"{API}/transactions", params={"limit": 1}).json()["total_entries"] == before
    assert _new_unknown_folders(folders) == set()


def test_preview_of_postgres_types_with_typed_query_parameters(
    clients: dict[str, httpx.Client], type_matrix: str
) -> None:
    answer = _preview(clients["analyst"], "type_matrix", min_id=3, max_i4=1_000_000, rows=2)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    with psycopg.connect(type_matrix) as conn:
        (count,) = conn.execute("SELECT count(*) FROM type_matrix WHERE id >= 3 AND i4 <= 1000000").fetchone()  # type: ignore[misc]
        first = conn.execute(
            "SELECT id, n::text, u::text FROM type_matrix WHERE id >= 3 AND i4 <= 1000000 ORDER BY id LIMIT 2"
        ).fetchall()
    assert body["rows"] == count
    columns = {c["name"]: c for c in body["columns"]}
    assert columns["n"] == {"name": "n", "source_type": "numeric(38,10)", "type": "decimal128(38, 10)", "note": None}
    assert columns["iv"]["type"] == "struct<months: int32, days: int32, microseconds: int64>"
    assert [(r["id"], r["n"], r["u"]) for r in body["sample"]] == first  # decimals exact, as text


@pytest.mark.parametrize(
    ("name", "query", "code", "field", "fragment"),
    [
        ("demo_orders", {"status": "lost"}, 422, "params.status", "allowed: pending, paid"),
        ("demo_orders", {"stauts": "paid"}, 422, "params.stauts", "unknown parameter"),
        ("demo_orders", {"rows": 1000}, 422, "rows", "less than or equal to 100"),
        ("type_matrix", {"max_i4": 3_000_000_000}, 422, "params.max_i4", "out of range for integer"),
        ("type_matrix", {"min_id": 10**20}, 422, "params.min_id", "out of range; allowed:"),
        ("nope", {}, 404, None, "no such definition"),
    ],
)  # fmt: skip
def test_preview_refusals_name_the_field(clients: dict[str, httpx.Client], name: str, query: dict[str, object],
                                         code: int, field: str | None, fragment: str) -> None:  # fmt: skip
    answer = _preview(clients["analyst"], name, **query)
    assert answer.status_code == code, answer.text
    body = answer.json()
    if field is None:
        assert fragment in body["detail"]
    else:
        assert fragment in {e["field"]: e["message"] for e in body["errors"]}[field]


def test_a_viewer_cannot_preview(clients: dict[str, httpx.Client]) -> None:
    assert _preview(clients["viewer"], "demo_orders").status_code == 403


def test_requests_beyond_64_bits_are_refused_by_the_api(clients: dict[str, httpx.Client]) -> None:
    answer = clients["analyst"].post(
        f"{API}/transactions", json={"definition": "type_matrix", "params": {"min_id": 10**20}}
    )
    assert answer.status_code == 422
    assert "out of range" in {e["field"]: e["message"] for e in answer.json()["errors"]}["params.min_id"]


def test_cli_preview(stack: AirflowStack) -> None:
    cli = str(Path(sys.executable).parent / "export-tx")
    env = {**os.environ, "EXPORT_TX_URL": stack.base_url, "EXPORT_TX_USER": "analyst",
           "EXPORT_TX_PASSWORD": stack.passwords()["analyst"]}  # fmt: skip
    done = subprocess.run([cli, "preview", "demo_orders", "--param", "status=paid", "--rows", "2"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created_at      TIMESTAMP -> timestamp[us]" in done.stdout
    assert "first 2 row(s)" in done.stdout and "nothing written" in done.stdout
    refused = subprocess.run([cli, "preview", "demo_orders", "--param", "status=lost"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "params.status" in refused.stderr
