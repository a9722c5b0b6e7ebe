"""Scale-out on CeleryExecutor: batches of one export run on two workers; a worker killed in the
middle of a batch costs a retry on the other worker, never a row.

A real deployment on this machine (see ``conftest.py``): api-server, scheduler, dag-processor,
triggerer, two Celery workers (Redis broker), metadata and header store on PostgreSQL, parts and
results on S3 (moto server). Every check reads the data back independently: the file from S3 with
boto3, the source with psycopg.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow.parquet as pq
import pytest

from export_tx import storage
from export_tx.states import State
from export_tx.store import Header
from tests.celery.conftest import Deployment
from tests.deploy import file_facts
from tests.helpers import maps_library

pytestmark = pytest.mark.stack

API = "/exports/v1"


def _terminal(header: Header) -> bool:
    return header.terminal


def _batches(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((t for t in tis if t["task_id"] == "export_batch"), key=lambda t: t["map_index"])


def _check_file_on_s3(celery: Deployment, header: Header) -> bytes:
    """The published file holds exactly the source's rows; no part and no temporary file is left."""
    folder = storage.tx_folder_name(header.id)
    prefix = f"exports/{folder}/"
    key = f"{prefix}result/orders.parquet"
    assert header.result_uri == f"s3://export_s3@{celery.s3.bucket}/{key}"
    assert celery.s3.keys(prefix) == [key]  # parts/ removed, no .tmp left
    assert celery.s3.keys(f"{prefix}parts/") == []
    body = celery.s3.read(key)
    assert len(body) == header.result_bytes
    assert hashlib.sha256(body).hexdigest() == header.result_sha256
    table = pq.read_table(io.BytesIO(body))
    assert file_facts(table) == celery.source.facts  # same rows, once each, e-mails masked
    emails = table["customer_email"].to_pylist()
    assert all("***@" in e and not e.startswith("customer") for e in emails[:1000])
    facts = celery.source.facts
    assert header.result_rows == header.rows_written == facts.rows == facts.distinct_keys
    plan = celery.store.plan(header.id)
    assert len(plan) == header.batches_total == header.batches_done
    assert all(b.state == "DONE" for b in plan) and sum(b.rows or 0 for b in plan) == facts.rows
    return body


def test_every_worker_process_holds_what_tasks_import(celery: Deployment) -> None:
    """A Celery worker preloads what export tasks import (config/airflow_local_settings.py): every
    process of both workers holds pyarrow's library — tasks, which import it too, run in processes
    forked from these, so only the preload puts it here."""
    celery.start_workers()
    for name in ("w1", "w2"):
        processes = celery.stack.worker_processes(name)
        assert processes and all(maps_library(pid, "libarrow.so") for pid in processes), name


def test_batches_run_on_both_workers_and_the_file_lands_on_s3(celery: Deployment) -> None:
    batch_size = 40_000  # 400,000 rows → 10 batches
    with celery.stack.client("admin") as client:
        answer = client.post(
            f"{API}/transactions", json={"definition": "orders", "batch_size": batch_size, "force": True}
        )
        assert answer.status_code == 202, answer.text
        tx_id = answer.json()["id"]

        header = celery.wait_header(client, tx_id, _terminal)
        assert header.state == State.SUCCEEDED, f"{header.error}\n{celery.logs()}"
        assert header.batches_total == 10
        assert celery.stack.wait_run(client, tx_id, timeout=120) == "success"

        tis = celery.task_instances(client, tx_id)
        batches = _batches(tis)
        assert [t["map_index"] for t in batches] == list(range(10))
        assert {t["state"] for t in batches} == {"success"}
        # Spread over both workers (each names itself through [core] hostname_callable) ...
        assert {t["hostname"] for t in batches} == {"w1", "w2"}, [(t["map_index"], t["hostname"]) for t in batches]
        # ... on the queues the environment routed them to.
        queues = celery.broker.queues
        assert {t["queue"] for t in batches} == {queues["batch"]}
        (merge,) = (t for t in tis if t["task_id"] == "merge_parts")
        assert merge["state"] == "success" and merge["queue"] == queues["merge"] and merge["hostname"] in {"w1", "w2"}

        body = _check_file_on_s3(celery, header)

        # The /exports API hands out a short-lived URL of the S3 server itself.
        assert header.downloaded_at is None
        download = client.get(f"{API}/transactions/{quote(tx_id, safe='')}/download", follow_redirects=False)
        assert download.status_code == 303, download.text
        url = download.headers["location"]
        assert url.startswith(f"{celery.s3.endpoint}/{celery.s3.bucket}/exports/"), url
        assert "X-Amz-Signature=" in url or "Signature=" in url
    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == header.result_sha256
    assert fetched.content == body
    assert 'filename="orders-' in fetched.headers.get("content-disposition", "")
    after = celery.store.get(tx_id)
    assert after.downloaded_at is not None
    assert [e.message for e in celery.store.events(tx_id, kind="download")] == ["downloaded by admin"]


def test_a_killed_worker_costs_a_retry_on_the_other_worker_not_a_row(celery: Deployment) -> None:
    batch_size = 50_000  # 8 batches
    with celery.stack.client("admin") as client:
        run = celery.stack.trigger(client, {"definition": "orders", "params": {}, "batch_size": batch_size})
        tx_id = run["dag_run_id"]

        # As soon as a batch runs on w1, take the whole worker down at once (a lost host).
        deadline = time.monotonic() + 180
        victims: list[dict[str, Any]] = []
        while not victims:
            assert time.monotonic() < deadline, f"no batch ran on w1\n{celery.logs()}"
            victims = [
                t
                for t in _batches(celery.task_instances(client, tx_id))
                if t["state"] == "running" and t["hostname"] == "w1"
            ]
            if not victims:
                time.sleep(0.2)
        celery.stack.stop_worker("w1", kill=True)
        assert "w1" not in celery.stack.worker_pids()
        assert celery.stack.worker_processes("w1") == []  # its task runners too (own process groups)

        header = celery.wait_header(client, tx_id, _terminal)
        assert header.state == State.SUCCEEDED, f"{header.error}\n{celery.logs()}"
        assert header.batches_total == 8
        assert celery.stack.wait_run(client, tx_id, timeout=120) == "success"
        batches = {t["map_index"]: t for t in _batches(celery.task_instances(client, tx_id))}

    assert sorted(batches) == list(range(8)) and {t["state"] for t in batches.values()} == {"success"}
    # The scheduler failed the killed batch once its heartbeat stopped; the retry ran on w2.
    # (A victim that finished in the instant before the kill keeps its first try on w1.)
    retried = [batches[v["map_index"]] for v in victims if batches[v["map_index"]]["try_number"] > v["try_number"]]
    assert retried, f"no batch was interrupted: {victims} → {batches}"
    assert {t["hostname"] for t in retried} == {"w2"}
    for victim in victims:
        final = batches[victim["map_index"]]
        assert final in retried or (final["hostname"] == "w1" and final["try_number"] == victim["try_number"])

    _check_file_on_s3(celery, header)  # every row exactly once
    recorded: dict[int, list[str]] = {}
    for event in celery.store.events(tx_id, limit=1000):
        if event.kind == "batch" and event.data:
            recorded.setdefault(int(event.data["batch_no"]), []).append(event.message)
    assert sorted(recorded) == list(range(1, 9))
    # A batch that w1 had written just before it died is recorded again by its retry: counted once.
    for messages in recorded.values():
        assert " done: " in messages[0] and all("re-run, counted once" in m for m in messages[1:]), messages
    # Batch N is map index N - 1. Only batches Airflow ran again were started twice.
    attempts = {b.batch_no: b.attempts for b in celery.store.plan(tx_id)}
    again = {i + 1 for i, t in batches.items() if t["try_number"] > 1}
    assert {n: a for n, a in attempts.items() if n not in again} == {n: 1 for n in attempts if n not in again}
    assert all(attempts[n] in (1, 2) for n in again), attempts
