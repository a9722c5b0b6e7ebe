"""Against a real Airflow stack: trigger through the stable REST API, poll, check header and file."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx.states import State
from tests.helpers import demo_source_rows, file_sha256, local_path, maps_library, read_result, store

pytestmark = pytest.mark.stack
RUNS = "/api/v2/dags/export_transaction/dagRuns"


def _wait_header(tx_id: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        header = store().find(tx_id)
        if header is not None and header.terminal:
            return header
        time.sleep(0.5)
    raise AssertionError(f"{tx_id} did not finish")


def test_rest_triggered_export_succeeds(stack: AirflowStack, demo_db: Path) -> None:
    with stack.client("admin") as client:  # Airflow's own doors are the platform team's
        run = stack.trigger(
            client, {"definition": "demo_orders", "params": {"status": "delivered"}, "batch_size": 3000}
        )
        assert run["logical_date"] is None
        tx = run["dag_run_id"]
        assert stack.wait_run(client, tx) == "success"
        tis = client.get(f"{RUNS}/{tx}/taskInstances", params={"limit": 100}).json()["task_instances"]
    header = store().get(tx)
    source = demo_source_rows(demo_db, "status = ?", ("delivered",))
    assert header.state == State.SUCCEEDED
    assert header.requested_by == "admin"
    assert header.result_rows == header.rows_written == len(source)
    assert header.batches_total == -(-len(source) // 3000)
    path = local_path(header.result_uri or "")
    assert file_sha256(path) == header.result_sha256 and path.stat().st_size == header.result_bytes
    assert read_result(header.result_uri or "") == source
    labels = sorted(t["rendered_map_index"] for t in tis if t["task_id"] == "export_batch")
    assert len(labels) == header.batches_total
    assert labels[0].startswith("batch-00001 of ") and "order_id from" in labels[0]
    states = {t["task_id"]: t["state"] for t in tis if t["task_id"] != "export_batch"}
    assert states == {
        "begin_transaction": "success",
        "plan_batches": "success",
        "merge_parts": "success",
        # No notify_email: nothing to start, nothing to finalize — and nothing skipped (pink) either.
        "request_notification": "success",
        "finalize_transaction": "success",
        # Not a point-in-time export: the snapshot's holder has no instance, no process started.
        "hold_snapshot": "skipped",
    }


def test_the_executor_workers_hold_what_tasks_import_before_they_fork_one(stack: AirflowStack) -> None:
    """With ``EXPORT_TX_PRELOAD=on`` (this session's stack), LocalExecutor's workers, forked from the
    scheduler at its start, hold pyarrow (and this library) from the scheduler's preload
    (config/airflow_local_settings.py): the tasks they fork start without importing it. The
    dag-processor, which forks no task, does not pay for it."""
    import psutil

    pids = stack.running_pids()
    scheduler = psutil.Process(pids["scheduler"])
    workers = [p for p in scheduler.children() if "LocalExecutor" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in scheduler.children()]
    assert maps_library(scheduler.pid, "libarrow.so")
    assert all(maps_library(w.pid, "libarrow.so") and maps_library(w.pid, "adbc_driver_manager/_lib") for w in workers)
    assert not maps_library(pids["dag-processor"], "libarrow.so")


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        ({"definition": "nope"}, "definition"),
        ({"definition": "demo_orders", "batch_size": 10}, "batch_size"),
        ({"definition": "demo_orders", "params": "status=paid"}, "params"),
    ],
)
def test_param_validation_refuses_bad_conf_at_trigger(
    stack: AirflowStack, conf: dict[str, object], fragment: str
) -> None:
    def run_ids(client: httpx.Client) -> set[str]:
        runs = client.get(RUNS, params={"limit": 100, "order_by": "-run_after"}).json()["dag_runs"]
        # Leave out what the scheduler may start meanwhile (the session's declared bulk export).
        return {r["dag_run_id"] for r in runs if not r["dag_run_id"].startswith("bulk__")}

    with stack.client("admin") as client:
        before = run_ids(client)
        answer = client.post(RUNS, json={"logical_date": None, "conf": conf})
        assert answer.status_code == 400, answer.text
        assert fragment in answer.text
        assert run_ids(client) == before


def test_definition_params_are_checked_by_the_first_task(stack: AirflowStack) -> None:
    with stack.client("admin") as client:
        run = stack.trigger(client, {"definition": "demo_orders", "params": {"status": "lost"}})
        assert stack.wait_run(client, run["dag_run_id"]) == "failed"
    header = _wait_header(run["dag_run_id"])
    assert header.state == State.FAILED  # type: ignore[attr-defined]
    assert "params.status: 'lost' is not allowed; allowed: pending, paid" in header.error  # type: ignore[attr-defined]
    assert store().plan(run["dag_run_id"]) == []


def test_viewer_cannot_trigger(stack: AirflowStack) -> None:
    with stack.client("viewer") as client:
        answer = client.post(RUNS, json={"logical_date": None, "conf": {"definition": "demo_orders"}})
    assert answer.status_code == 403
