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
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from export_tx import storage
from export_tx.states import State
from export_tx.store import Header
from tests.deploy import file_facts, source_facts
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


def _denied_part(batch_no: int) -> Callable[[str, str], bool]:
    return lambda method, path: method in ("PUT", "POST") and f"/parts/part-{batch_no:05d}." in path


def test_a_failed_export_resumes_only_its_unfinished_batch_and_writes_the_same_file(
    fx: Faults, analyst: httpx.Client, admin: httpx.Client
) -> None:
    """Batch 3 cannot store its part (S3 refuses it): the export ends FAILED with the other four
    parts kept. POST …/retry runs batch 3 alone, then the merge, in the same Airflow run under the
    same token; the file equals, byte for byte, what an uninterrupted run of the same request writes."""
    fx.proxy.deny(_denied_part(3))
    try:
        tx_id = fx.request(analyst)
        failed = fx.wait_terminal(tx_id)
    finally:
        fx.proxy.allow()
    assert failed.state == State.FAILED, failed
    assert fx.stack.wait_run(admin, tx_id, timeout=120) == "failed"
    plan = {b.batch_no: b for b in fx.store.plan(tx_id)}
    assert [n for n, b in plan.items() if b.state == "DONE"] == [1, 2, 4, 5]
    prefix = f"exports/{storage.tx_folder_name(tx_id)}/"
    kept = [k for k in fx.s3.keys(prefix) if "/parts/" in k]
    assert kept == [f"{prefix}parts/part-{n:05d}.parquet" for n in (1, 2, 4, 5)]  # kept for the retry
    first_tries = {n: b.attempts for n, b in plan.items()}

    answer = analyst.post(f"{API}/transactions/{quote(tx_id, safe='')}/retry")
    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "RUNNING" and answer.json()["resumes"] == 1 and answer.json()["id"] == tx_id
    header = check_exact(fx, tx_id)
    # Only batch 3 ran again: the others' attempts and Airflow tries are those of the first run.
    attempts = {b.batch_no: b.attempts for b in fx.store.plan(tx_id)}
    assert attempts == {n: first_tries[n] + (1 if n == 3 else 0) for n in range(1, BATCHES + 1)}
    tries = {t["map_index"] + 1: t["try_number"] for t in fx.task_instances(admin, tx_id)
             if t["task_id"] == "export_batch"}  # fmt: skip
    assert tries[3] > 1 and all(tries[n] == 1 for n in (1, 2, 4, 5)), tries
    # One log, continued: failed, resumed (naming what runs again), succeeded.
    states = [e.message.split(":")[0] for e in fx.store.events(tx_id, limit=1000) if e.kind == "state"]
    assert states == ["REQUESTED", "RUNNING", "FAILED", "RUNNING", "MERGING", "SUCCEEDED"], states
    resumed = [e for e in fx.store.events(tx_id, limit=1000) if e.kind == "state" and "resumed by" in e.message]
    assert len(resumed) == 1 and resumed[0].data is not None
    assert resumed[0].data["rerun"] == [3] and resumed[0].data["kept"] == [1, 2, 4, 5]
    # What an uninterrupted run of the same request writes (force: the same export, again).
    again = analyst.post(f"{API}/transactions", json={"definition": "orders", "batch_size": 40_000, "force": True})
    assert again.status_code == 202, again.text
    uninterrupted = check_exact(fx, again.json()["id"])
    assert uninterrupted.result_sha256 == header.result_sha256
    # A succeeded transaction is not resumed: the state machine says so.
    refused = analyst.post(f"{API}/transactions/{quote(tx_id, safe='')}/retry")
    assert refused.status_code == 409 and "SUCCEEDED" in refused.json()["detail"]


def test_a_cancel_keeps_a_partial_file_of_the_finished_batches(
    fx: Faults, analyst: httpx.Client, admin: httpx.Client
) -> None:
    """Batch 5's upload is held; once batches 1-4 are done the export is cancelled with
    keep_partial: CANCELLED with a downloadable partial file whose rows are exactly the source's
    in the four finished batches' key ranges."""
    held = fx.proxy.hold(lambda method, path: method == "PUT" and "/parts/part-00005." in path)
    tx_id = fx.request(analyst)
    try:
        assert held.arrived.wait(180), f"batch 5 never uploaded its part\n{fx.logs()}"
        fx.wait_header(tx_id, lambda h: h.batches_done == 4 or h.terminal)
        answer = analyst.post(f"{API}/transactions/{quote(tx_id, safe='')}/cancel", json={"keep_partial": True})
    finally:
        held.release()
    assert answer.status_code == 202, answer.text
    tx = answer.json()
    assert tx["state"] == "CANCELLED" and tx["result"]["partial"] is True
    plan = {b.batch_no: b for b in fx.store.plan(tx_id)}
    finished = [plan[n] for n in (1, 2, 3, 4)]
    assert [(r["batch_no"], r["from"], r["below"], r["rows"]) for r in tx["result"]["ranges"]] == [
        (b.batch_no, b.lo, b.hi, b.rows) for b in finished
    ]
    assert tx["result"]["rows"] == sum(b.rows or 0 for b in finished) < SOURCE_ROWS
    download = analyst.get(f"{API}/transactions/{quote(tx_id, safe='')}/download", follow_redirects=True)
    assert download.status_code == 200, download.text
    assert hashlib.sha256(download.content).hexdigest() == tx["result"]["sha256"]
    partial = pq.read_table(io.BytesIO(download.content))
    assert file_facts(partial) == source_facts(fx.source.dsn, below=plan[5].lo)
    # Only the partial file is left in storage; the run was stopped.
    prefix = f"exports/{storage.tx_folder_name(tx_id)}/"
    assert fx.stack.wait_run(admin, tx_id, timeout=120) == "failed"
    assert fx.s3.keys(prefix) == [f"{prefix}partial/orders-partial.parquet"]
    status_now = status(analyst, tx_id).json()
    assert status_now["result"]["partial"] is True and status_now["result"]["sha256"] == tx["result"]["sha256"]
