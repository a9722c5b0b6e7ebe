"""An export survives what production does to it: a task process killed mid-upload, the
scheduler, the api-server and the header store's PostgreSQL restarted mid-run, S3 down during
the merge. Each ends SUCCEEDED with every source row exactly once (read back from S3 with boto3
and compared with facts PostgreSQL computes), nothing left in storage but the file, and each
batch counted once however often it ran.
"""

from __future__ import annotations

import hashlib
import io
import signal
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from export_tx import storage
from export_tx.states import State
from export_tx.store import Header
from tests.deploy import file_facts
from tests.faults.conftest import API, SOURCE_ROWS, Faults

pytestmark = pytest.mark.stack

BATCHES = 5


@pytest.fixture
def fx(faults: Faults) -> Faults:
    """The deployment whole again: every component running (a test stops some), the store up."""
    if not faults.pg.running():
        faults.pg.start()
    faults.stack.start()
    faults.stack.wait_ready(timeout=180)
    return faults


@pytest.fixture
def analyst(fx: Faults) -> Iterator[httpx.Client]:
    with fx.stack.client("analyst") as client:
        yield client


@pytest.fixture
def admin(fx: Faults) -> Iterator[httpx.Client]:
    with fx.stack.client("admin") as client:
        yield client


def status(client: httpx.Client, tx_id: str) -> httpx.Response:
    return client.get(f"{API}/transactions/{quote(tx_id, safe='')}")


def mid_run(header: Header) -> bool:
    return header.state == State.RUNNING and 1 <= header.batches_done < (header.batches_total or 0)


def check_exact(fx: Faults, tx_id: str) -> Header:
    """SUCCEEDED; the file on S3 holds every source row once; only the file is left; every
    batch counted once."""
    header = fx.wait_terminal(tx_id)
    assert header.state == State.SUCCEEDED, f"{header.error}\n{fx.logs()}"
    with fx.stack.client("admin") as admin:  # the merge removes the parts after publishing
        assert fx.stack.wait_run(admin, tx_id, timeout=120) == "success"
    prefix = f"exports/{storage.tx_folder_name(tx_id)}/"
    key = f"{prefix}result/orders.parquet"
    assert fx.s3.keys(prefix) == [key]  # no part, no temporary file
    assert fx.s3.pending_uploads(prefix) == []  # no unfinished multipart upload either
    body = fx.s3.read(key)
    assert len(body) == header.result_bytes
    assert hashlib.sha256(body).hexdigest() == header.result_sha256
    assert file_facts(pq.read_table(io.BytesIO(body))) == fx.source.facts
    plan = fx.store.plan(tx_id)
    assert len(plan) == header.batches_total == header.batches_done == BATCHES
    assert [b.state for b in plan] == ["DONE"] * BATCHES
    assert sum(b.rows or 0 for b in plan) == header.rows_written == header.result_rows == SOURCE_ROWS
    return header


def task_process(ti_id: str) -> psutil.Process:
    """The process running a task instance: Airflow titles it ``airflow worker -- <ti id>``."""
    for proc in psutil.process_iter(["cmdline"]):
        if f"airflow worker -- {ti_id}" in " ".join(proc.info["cmdline"] or ()):
            return proc
    raise AssertionError(f"no process runs task instance {ti_id}")


def batch_ti(fx: Faults, client: httpx.Client, tx_id: str, batch_no: int) -> dict[str, Any]:
    tis = fx.task_instances(client, tx_id)
    (ti,) = (t for t in tis if t["task_id"] == "export_batch" and t["map_index"] == batch_no - 1)
    return ti


def test_a_batch_killed_mid_upload_runs_again_and_counts_once(fx: Faults, analyst: httpx.Client,
                                                              admin: httpx.Client) -> None:  # fmt: skip
    # The part of batch 2 is held in the middle of its upload: the process is surely mid-write.
    held = fx.proxy.hold(lambda method, path: method == "PUT" and path.endswith("/parts/part-00002.parquet"))
    tx_id = fx.request(analyst)
    assert held.arrived.wait(180), f"batch 2 never uploaded its part\n{fx.logs()}"
    first = batch_ti(fx, admin, tx_id, 2)
    assert first["state"] == "running" and first["try_number"] == 1
    victim = task_process(first["id"])
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    held.release()  # the half-sent upload is cut: S3 never saw a whole part from that process

    check_exact(fx, tx_id)
    again = batch_ti(fx, admin, tx_id, 2)
    assert again["state"] == "success" and again["try_number"] == 2
    attempts = {b.batch_no: b.attempts for b in fx.store.plan(tx_id)}
    assert attempts == {n: 2 if n == 2 else 1 for n in range(1, BATCHES + 1)}


def test_a_scheduler_restart_mid_run_loses_nothing(fx: Faults, analyst: httpx.Client) -> None:
    tx_id = fx.request(analyst)
    fx.wait_header(tx_id, mid_run)
    fx.stack.stop_component("scheduler")
    time.sleep(3)
    # The requester sees a running export meanwhile, not an error.
    answer = status(analyst, tx_id)
    assert answer.status_code == 200 and answer.json()["state"] in ("RUNNING", "MERGING", "SUCCEEDED")
    fx.stack.start()
    check_exact(fx, tx_id)


def test_an_api_server_restart_mid_run_fails_polls_for_a_while_and_loses_nothing(
    fx: Faults, analyst: httpx.Client
) -> None:
    tx_id = fx.request(analyst)
    fx.wait_header(tx_id, mid_run)
    fx.stack.stop_component("api-server")
    with pytest.raises(httpx.ConnectError):
        status(analyst, tx_id)
    time.sleep(3)
    fx.stack.start()
    fx.stack.wait_ready(timeout=180)
    header = check_exact(fx, tx_id)
    # The same token (signed with the deployment's key) still reads the same export.
    answer = status(analyst, tx_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "SUCCEEDED" and answer.json()["result"]["sha256"] == header.result_sha256


def test_a_header_store_restart_mid_run_answers_503_meanwhile_and_loses_nothing(
    fx: Faults, analyst: httpx.Client
) -> None:
    tx_id = fx.request(analyst)
    fx.wait_header(tx_id, mid_run)
    fx.pg.stop()
    try:
        answer = status(analyst, tx_id)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) > 0
        assert "store" in answer.json()["detail"].lower()
        time.sleep(2)
    finally:
        fx.pg.start()
    check_exact(fx, tx_id)
    # Batches that lost the store while finishing ran again, and were counted once.
    for event in fx.store.events(tx_id, limit=1000):
        if event.kind == "batch" and "counted once" in event.message:
            assert "re-run" in event.message


def test_s3_down_during_the_merge_is_retried_and_never_publishes_half_a_file(
    fx: Faults, analyst: httpx.Client, admin: httpx.Client
) -> None:
    # The merge's upload of the temporary file is cut, and S3 answers nothing for 8 s.
    fx.proxy.outage_on(lambda method, path: path.split("?")[0].endswith("/result/.orders.parquet.tmp"), seconds=8)
    tx_id = fx.request(analyst)
    fx.wait_header(tx_id, lambda h: fx.proxy.down() or h.terminal, timeout=240)
    prefix = f"exports/{storage.tx_folder_name(tx_id)}/"
    # During the outage: no file is published and the transaction is still merging.
    assert f"{prefix}result/orders.parquet" not in fx.s3.keys(prefix)
    assert fx.store.get(tx_id).state == State.MERGING
    assert any(path.endswith(f"/{prefix}result/.orders.parquet.tmp") for _, path in fx.proxy.cut)
    check_exact(fx, tx_id)
    # The upload was sent again once S3 was back (by the storage client's retries, or the
    # task's): the published file is that whole second upload, never the cut one.
    tmp = f"/{prefix}result/.orders.parquet.tmp"
    uploads = [p for m, p in fx.proxy.seen if m == "PUT" and p.split("?")[0].endswith(tmp)]
    assert len(uploads) >= 2, uploads
    (merge,) = (t for t in fx.task_instances(admin, tx_id) if t["task_id"] == "merge_parts")
    assert merge["state"] == "success"
