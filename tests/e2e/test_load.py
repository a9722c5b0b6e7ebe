"""Load on the shared stack: 20 exports requested at once, 200 status polls from 20 threads while
they run. Every request gets its own transaction, every poll a right answer, and every file holds
exactly the source rows its parameters select, value by value. (Latencies are measured and
printed by ``make bench``, never asserted here.)"""

from __future__ import annotations

import io
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from bench.api_load import run_concurrently
from devtools.stack import AirflowStack
from export_tx.definitions._orders_common import ORDER_STATUSES
from tests.e2e.conftest import terminal, tx_url, wait_status
from tests.helpers import demo_source_rows

pytestmark = pytest.mark.stack

EXPORTS = 20  # more than max_active_runs (16): the burst queues
POLLS = 200
POLLERS = 20


def _bodies(demo_db: Path) -> list[dict[str, Any]]:
    """Different requests: each status from a different first day."""
    with sqlite3.connect(demo_db) as conn:
        first = date.fromisoformat(conn.execute("SELECT min(created_at) FROM demo_orders").fetchone()[0][:10])
    return [
        {
            "definition": "demo_orders",
            "params": {"status": ORDER_STATUSES[i % len(ORDER_STATUSES)], "since": str(first + timedelta(days=9 * i))},
            "batch_size": 20_000,  # one batch each: the load is on the API and the scheduler
        }
        for i in range(EXPORTS)
    ]


def test_twenty_concurrent_exports_and_two_hundred_polls_are_all_exact(
    stack: AirflowStack, clients: dict[str, httpx.Client], demo_db: Path
) -> None:
    analyst = clients["analyst"]
    auth = {"Authorization": analyst.headers["Authorization"]}

    def client() -> httpx.Client:
        return httpx.Client(base_url=stack.base_url, headers=auth, timeout=75)

    bodies = _bodies(demo_db)
    posted = run_concurrently(client, lambda c, body: c.post("/exports/v1/transactions", json=body), bodies, EXPORTS)
    assert [t.answer.status_code for t in posted] == [202] * EXPORTS, [t.answer.text for t in posted][:3]
    txs = [t.answer.json() for t in posted]
    ids = [tx["id"] for tx in txs]
    assert len(set(ids)) == EXPORTS
    for tx, body in zip(txs, bodies, strict=True):
        assert {k: v for k, v in tx["params"].items() if v is not None} == body["params"]

    polled = run_concurrently(client, lambda c, i: c.get(tx_url(ids[i % EXPORTS])), range(POLLS), POLLERS)
    assert [t.answer.status_code for t in polled] == [200] * POLLS
    for i, timed in enumerate(polled):
        status = timed.answer.json()
        assert status["id"] == ids[i % EXPORTS] and status["requested_by"] == "analyst"
        assert status["state"] in ("REQUESTED", "RUNNING", "MERGING", "SUCCEEDED"), status

    finals: dict[str, dict[str, Any]] = {}
    for tx_id in ids:
        finals[tx_id] = wait_status(analyst, tx_id, terminal, timeout=900)
    assert {f["state"] for f in finals.values()} == {"SUCCEEDED"}, [f["error"] for f in finals.values()][:3]

    for tx_id, body in zip(ids, bodies, strict=True):
        expected = demo_source_rows(demo_db, "created_at >= ? AND status = ?",
                                    (body["params"]["since"], body["params"]["status"]))  # fmt: skip
        download = analyst.get(f"{tx_url(tx_id)}/download")
        assert download.status_code == 200, download.text
        table = pq.read_table(io.BytesIO(download.content))
        assert [tuple(r.values()) for r in table.to_pylist()] == expected, tx_id
        assert finals[tx_id]["result"]["rows"] == len(expected) > 0
