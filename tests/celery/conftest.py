"""A real distributed deployment on this machine: CeleryExecutor with two workers, S3 storage.

Module-scoped, started once for ``tests/celery``: a moto S3 server on loopback, fresh
PostgreSQL databases (Airflow's metadata; the orders source and the header store), an
AirflowStack on CeleryExecutor (Redis broker, PostgreSQL result backend) and two Celery
workers ``w1`` / ``w2``, each in its own folder and process group. Everything is stopped and
dropped afterwards, whatever happens.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx.store import Header, HeaderStore
from tests.deploy import S3, Source, fresh_database, moto_s3, orders_source
from tests.smtp import free_port

#: Rows in the source table: 8–12 batches of a few tens of thousands of rows each.
SOURCE_ROWS = 400_000
WORKERS = ("w1", "w2")
REDIS = "redis://127.0.0.1:6379"
#: Redis databases tried for the broker, first empty one wins (other sessions may use Redis too).
REDIS_DBS = range(7, 16)
RUNS = "/api/v2/dags/export_transaction/dagRuns"


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    """The ``orders`` table (PostgreSQL) the ``orders`` definition reads; the header store lives
    in the same database."""
    with orders_source("export_tx_celery_data", SOURCE_ROWS) as found:
        yield found


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """moto in server mode on loopback: the workers and the api-server reach it over HTTP."""
    with moto_s3() as found:
        yield found


# -- Redis (the Celery broker) -------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    url: str
    queue: str  # prefix of this deployment's queues

    @property
    def queues(self) -> dict[str, str]:
        return {"default": self.queue, "batch": f"{self.queue}.batch", "merge": f"{self.queue}.merge"}


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """An empty Redis database and queue names of our own, so another session's Celery workers
    never take our tasks (nor ours theirs); our keys are removed afterwards."""
    import redis

    for db in REDIS_DBS:
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0:
            break
        client.close()
    else:
        raise AssertionError(f"no empty Redis database among {list(REDIS_DBS)} at {REDIS}")
    queue = f"export_tx_{uuid.uuid4().hex[:8]}"
    try:
        yield Broker(f"{REDIS}/{db}", queue)
    finally:
        _remove_our_keys(client, queue)
        client.close()


def _remove_our_keys(client: Any, queue: str) -> None:
    # Messages a killed worker had taken but not acknowledged wait in ``unacked`` (for hours).
    for tag, message in client.hgetall("unacked").items():
        if queue.encode() in message:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    for key in client.scan_iter(match=f"*{queue}*"):
        client.delete(key)
    # Only Celery's own bookkeeping left (pidbox bindings, empty unacked): leave the database empty.
    generic = (b"_kombu.binding.celery.pidbox", b"_kombu.binding.celeryev", b"_kombu.binding.reply.celery.pidbox")
    left = set(client.keys())
    if left and left <= {*generic, b"unacked", b"unacked_index", b"unacked_mutex"} and not client.hlen("unacked"):
        client.delete(*left)


# -- the deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    stack: AirflowStack
    s3: S3
    source: Source
    broker: Broker
    store: HeaderStore

    def start_workers(self) -> None:
        """Start every worker not running (after a test killed one) and wait until all answer."""
        for name in WORKERS:
            self.stack.start_worker(name, queues=list(self.broker.queues.values()))
        self.stack.wait_workers(WORKERS, timeout=120)

    def wait_header(
        self, client: httpx.Client, tx_id: str, until: Callable[[Header], bool], timeout: float = 240
    ) -> Header:
        deadline = time.monotonic() + timeout
        header = None
        while time.monotonic() < deadline:
            header = self.store.find(tx_id)
            if header is not None and until(header):
                return header
            time.sleep(0.5)
        tis = "\n".join(
            f"{t['task_id']}[{t['map_index']}] {t['state']} try {t['try_number']} on {t['hostname'] or '-'}"
            for t in self.task_instances(client, tx_id)
        )
        raise AssertionError(f"{tx_id}: not reached in {timeout:.0f} s; header {header}\n{tis}\n{self.logs()}")

    def task_instances(self, client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
        answer = client.get(f"{RUNS}/{quote(run_id, safe='')}/taskInstances", params={"limit": 100})
        answer.raise_for_status()
        return sorted(answer.json()["task_instances"], key=lambda t: (t["task_id"], t["map_index"]))

    def logs(self, lines: int = 25) -> str:
        """The ends of the worker and scheduler logs, for failure messages."""
        out = []
        logs = self.stack.home / "logs"
        for path in [*(self.stack.worker_log(n) for n in WORKERS), logs / "scheduler.log"]:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


@pytest.fixture(scope="module")
def deployment(session_dir: Path, s3: S3, source: Source, broker: Broker) -> Iterator[Deployment]:
    with fresh_database("export_tx_celery_meta") as meta_dsn:
        meta = meta_dsn.split("://", 1)[1]
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"},
        }
        stack = AirflowStack(
            session_dir / "celery-stack",
            port=free_port(),
            extra_env={
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{meta}",
                "AIRFLOW__CELERY__BROKER_URL": broker.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{meta}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": broker.queues["default"],
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devtools.stack.hostname",
                # A killed worker's running tasks are failed (and retried elsewhere) within seconds ...
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                # ... and one it had received but not started yet (still "queued": no heartbeat to
                # miss) is re-queued after this, not after the default 600 s. Here tasks start
                # within a second or two of being queued (parallelism 4 = the workers' 4 slots).
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "30",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
                "EXPORT_TX_BATCH_QUEUE": broker.queues["batch"],
                "EXPORT_TX_MERGE_QUEUE": broker.queues["merge"],
                "EXPORT_TX_STORE_CONN_ID": "export_tx_store",
                "AIRFLOW_CONN_EXPORT_TX_STORE": source.dsn,
                "AIRFLOW_CONN_EXPORT_SOURCE_PG": source.dsn,
                "EXPORT_TX_STORAGE_URI": f"s3://export_s3@{s3.bucket}/exports",
                "AIRFLOW_CONN_EXPORT_S3": json.dumps(aws),
                "EXPORT_TX_RETRY_DELAY_SECONDS": "1",
                # Only the exports under test on the workers' four slots: no scheduled housekeeping.
                "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",
            },
        )
        store = HeaderStore("postgresql+psycopg://" + source.dsn.split("://", 1)[1])
        store.ensure_schema()
        try:
            stack.migrate()
            stack.start()
            found = Deployment(stack, s3, source, broker, store)
            found.start_workers()
            stack.wait_ready(timeout=240)
            yield found
        finally:
            stack.stop()
            store.engine.dispose()


@pytest.fixture
def celery(deployment: Deployment) -> Deployment:
    """The deployment with both workers running (a test may have killed one)."""
    deployment.start_workers()
    return deployment
