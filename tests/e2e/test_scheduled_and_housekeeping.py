"""Scheduled bulk exports and housekeeping, run by the real scheduler."""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx import storage
from export_tx.states import State
from export_tx.store import headers, utcnow
from tests.e2e.conftest import terminal, tx_url, wait_status
from tests.helpers import local_path, store

pytestmark = pytest.mark.stack
RUNS = "/api/v2/dags/{}/dagRuns"


def test_a_declared_bulk_export_runs_on_its_schedule(stack: AirflowStack, clients: dict[str, httpx.Client]) -> None:
    analyst = clients["analyst"]
    deadline = time.monotonic() + 180
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline and not found:
        listed = analyst.get("/exports/v1/transactions", params={"limit": 100}).json()["transactions"]
        found = [t for t in listed if str(t["id"]).startswith("bulk__e2e_once__")]
        time.sleep(1)
    assert found, "the scheduler did not run bulk_export__e2e_once"
    final = wait_status(analyst, str(found[0]["id"]), terminal)
    assert final["state"] == "SUCCEEDED" and final["requested_by"] == "analyst"
    assert final["result"]["rows"] == 2000 and final["params"] == {"status": "paid"}
    runs = clients["admin"].get(RUNS.format("bulk_export__e2e_once")).json()["dag_runs"]
    assert [r["run_type"] for r in runs] == ["scheduled"]
    assert stack.wait_run(clients["admin"], runs[0]["dag_run_id"], timeout=60, dag_id="bulk_export__e2e_once") == (
        "success"
    )
    # The export is a normal export_transaction run whose id is the token.
    assert stack.wait_run(clients["admin"], str(final["id"]), timeout=60) == "success"


def _run_housekeeping(stack: AirflowStack, admin: httpx.Client) -> None:
    run = stack.trigger(admin, {}, dag_id="export_housekeeping")
    assert stack.wait_run(admin, run["dag_run_id"], dag_id="export_housekeeping") == "success"


def test_a_person_cannot_take_a_bulk_exports_run_id(stack: AirflowStack, clients: dict[str, httpx.Client]) -> None:
    """Only the bulk export's own DAG may start runs with its (predictable) ids — not even the
    platform team by hand (analysts cannot start export runs through Airflow at all)."""
    admin = clients["admin"]
    squatted = "bulk__weekly_shipped_orders__20990101T060000"
    stack.trigger(admin, {"definition": "demo_orders", "params": {}}, run_id=squatted)
    assert stack.wait_run(admin, squatted) == "failed"
    header = store().get(squatted)
    assert header.state == State.FAILED and header.requested_by == "admin"
    assert "dag_run_id: run ids starting with bulk__ are reserved for scheduled bulk exports" in (header.error or "")


def test_housekeeping_expires_cleans_and_reconciles(stack: AirflowStack, clients: dict[str, httpx.Client]) -> None:
    analyst, admin = clients["analyst"], clients["admin"]
    s = store()
    # 1. a result past its retention
    tx = analyst.post("/exports/v1/transactions", json={"definition": "demo_orders", "force": True,
                                                        "params": {"status": "returned"}}).json()  # fmt: skip
    done = wait_status(analyst, tx["id"], terminal)
    assert done["state"] == "SUCCEEDED"
    assert done["result"]["storage_uri"] is None  # requesters see download links, not storage
    assert done["result"]["uri"] == done["links"]["download"]
    path = local_path(admin.get(tx_url(tx["id"])).json()["result"]["storage_uri"])
    s.update(tx["id"], expires_at=utcnow() - timedelta(minutes=1))

    # 2. a header whose run was deleted
    ghost = f"exp_ghost_{int(time.time())}"
    s.create(ghost, definition="demo_orders", params={}, batch_size=1000, requested_by="analyst")
    s.transition(ghost, State.RUNNING, "started")

    # 3. a run marked failed while nothing closed its header (no header yet when it happened)
    paused = admin.patch("/api/v2/dags/export_transaction", json={"is_paused": True})
    assert paused.status_code == 200
    try:
        orphan = stack.trigger(admin, {"definition": "demo_orders", "params": {}})["dag_run_id"]
        failed = admin.patch(f"{RUNS.format('export_transaction')}/{quote(orphan, safe='')}", json={"state": "failed"})
        assert failed.status_code == 200
    finally:
        admin.patch("/api/v2/dags/export_transaction", json={"is_paused": False})
    s.create(orphan, definition="demo_orders", params={}, batch_size=1000, requested_by="admin")
    part = storage.part_path(orphan, 1)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"left behind")
    with s.engine.begin() as conn:
        conn.execute(headers.update().where(headers.c.id.in_([ghost, orphan]))
                     .values(updated_at=utcnow() - timedelta(hours=1)))  # fmt: skip

    _run_housekeeping(stack, admin)

    expired = analyst.get(tx_url(tx["id"])).json()
    assert expired["state"] == "EXPIRED" and expired["result"] is None
    assert not path.exists()
    gone = analyst.get(tx_url(tx["id"]) + "/download")
    assert gone.status_code == 410 and "EXPIRED" in gone.json()["detail"]

    assert s.get(ghost).state == State.FAILED
    assert "no longer exists (deleted)" in (s.get(ghost).error or "")
    assert s.get(orphan).state == State.FAILED
    assert "ended failed before the export finished" in (s.get(orphan).error or "")
    assert not storage.parts_dir(orphan).exists()
    for tx_id, kind in ((tx["id"], "state"), (ghost, "state"), (orphan, "cleanup")):
        assert s.last_event(tx_id, kind) is not None
