"""The export-tx command-line client against the real api-server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.stack import AirflowStack
from tests.helpers import demo_source_rows, read_result, store

pytestmark = pytest.mark.stack
CLI = str(Path(sys.executable).parent / "export-tx")


def _cli(stack: AirflowStack, *args: str, user: str = "analyst") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXPORT_TX_URL": stack.base_url, "EXPORT_TX_USER": user,
           "EXPORT_TX_PASSWORD": stack.passwords()[user]}  # fmt: skip
    env.pop("EXPORT_TX_TOKEN", None)
    # No terminal on stdin, as in a script: nothing may wait for an answer.
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_request_wait_status_logs_download(stack: AirflowStack, tmp_path: Path, demo_db: Path) -> None:
    done = _cli(stack, "request", "demo_orders", "--param", "status=shipped", "--param", "since=2025-06-01",
                "--batch-size", "1000", "--retention-days", "2", "--force", "--wait")  # fmt: skip
    assert done.returncode == 0, done.stderr
    tx_id = done.stdout.splitlines()[0]
    assert "SUCCEEDED" in done.stdout and "100%" in done.stdout  # the progress bar's last frame
    header = store().get(tx_id)
    assert f"result     {header.result_rows:,} rows" in done.stdout
    assert header.retention_days == 2

    status = _cli(stack, "status", tx_id)
    assert status.returncode == 0 and f"sha256 {header.result_sha256}" in status.stdout

    logs = _cli(stack, "logs", tx_id)
    assert logs.returncode == 0
    assert "REQUESTED: requested by analyst" in logs.stdout.splitlines()[0]

    target = tmp_path / "out.parquet"
    fetched = _cli(stack, "download", tx_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == header.result_sha256
    source = demo_source_rows(demo_db, "status = ? AND created_at >= ?", ("shipped", "2025-06-01"))
    assert read_result(f"file://{target}") == source

    listed = _cli(stack, "list", "--state", "SUCCEEDED")
    assert tx_id in listed.stdout


def test_errors_are_clear_and_exit_non_zero(stack: AirflowStack) -> None:
    bad = _cli(stack, "request", "demo_orders", "--param", "status=lost")
    assert bad.returncode == 2
    assert "422" in bad.stderr and "params.status: 'lost' is not allowed" in bad.stderr
    assert bad.stderr.count("'lost' is not allowed") == 1  # said once, not in the detail and again below
    refused = _cli(stack, "request", "demo_orders", user="viewer")
    assert refused.returncode == 2 and "403" in refused.stderr
    missing = _cli(stack, "status", "exp_nope")
    assert missing.returncode == 2 and "404" in missing.stderr


def test_cancel(stack: AirflowStack) -> None:
    started = _cli(stack, "request", "demo_orders", "--batch-size", "1000", "--force")
    tx_id = started.stdout.strip()
    unasked = _cli(stack, "cancel", tx_id)  # no terminal to ask on, no --yes: refused before any call
    assert unasked.returncode == 2 and "pass --yes" in unasked.stderr
    cancelled = _cli(stack, "cancel", tx_id, "--yes")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{tx_id} CANCELLED"
    assert store().get(tx_id).cancelled_by == "analyst"


def test_keep_partial_batches_and_the_same_request_again(stack: AirflowStack, tmp_path: Path) -> None:
    """In a terminal: a cancel that keeps the finished batches, the batches it lists, the partial
    file downloaded and checked; then the same request twice — the second names the first."""
    import time

    started = _cli(stack, "request", "demo_orders", "--batch-size", "1000", "--label", "cli partial", "--force")
    tx_id = started.stdout.strip()
    deadline = time.monotonic() + 120
    while store().get(tx_id).batches_done < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    cancelled = _cli(stack, "cancel", tx_id, "--yes", "--keep-partial")
    assert cancelled.returncode == 0, cancelled.stderr
    header = store().get(tx_id)
    assert cancelled.stdout.strip() == f"{tx_id} CANCELLED (partial file: {header.result_rows:,} rows)"
    listed = _cli(stack, "batches", tx_id)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    done = [b for b in store().plan(tx_id) if b.state == "DONE"]
    assert len(lines) == 20 and sum("DONE" in line for line in lines) == len(done) >= 1
    assert sum(b.rows or 0 for b in done) == header.result_rows
    shown = _cli(stack, "status", tx_id)
    assert "partial    only the batches that finished: keys in [" in shown.stdout
    target = tmp_path / "partial.parquet"
    fetched = _cli(stack, "download", tx_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == header.result_sha256
    assert len(read_result(f"file://{target}")) == header.result_rows

    first = _cli(stack, "request", "demo_orders", "--param", "status=returned", "--label", "cli twice", "--force")
    again = _cli(stack, "request", "demo_orders", "--param", "status=returned")
    assert again.returncode == 0 and again.stdout.strip() == first.stdout.strip()
    assert "you already have this export" in again.stderr and "--force starts another" in again.stderr


def test_wait_follows_a_run_triggered_through_airflows_api(stack: AirflowStack) -> None:
    """The platform team triggers through the stable REST API; the CLI follows before the header exists."""
    with stack.client("admin") as client:
        run_id = stack.trigger(client, {"definition": "demo_orders", "params": {"status": "paid"}})["dag_run_id"]
    followed = _cli(stack, "status", run_id, "--wait", user="admin")
    assert followed.returncode == 0, followed.stderr
    assert "state      SUCCEEDED" in followed.stdout and "result     2,000 rows" in followed.stdout
