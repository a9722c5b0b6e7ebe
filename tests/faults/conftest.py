"""Faults on a real deployment: LocalExecutor (the embedded default's executor), the header store
on a PostgreSQL cluster of the module's own (so a test may restart it), the files on an
S3-compatible server reached through a proxy that fails on cue, the ``orders`` source on the
machine's PostgreSQL. Started once for ``tests/faults`` and stopped afterwards, whatever happens.

Each test injects one fault into a running export and ends with the file equal to the source,
value by value (facts computed by PostgreSQL itself), or a terminal header that explains itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx.states import State
from export_tx.store import Header, HeaderStore
from tests.deploy import S3, PrivatePostgres, S3Proxy, Source, moto_s3, orders_source
from tests.smtp import free_port

#: 200,000 rows: batches of 40,000 take about a second each, long enough to fail in the middle.
SOURCE_ROWS = 200_000
BATCH_SIZE = 40_000
API = "/exports/v1"
TERMINAL = {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED}


@dataclass
class Faults:
    stack: AirflowStack
    store: HeaderStore
    pg: PrivatePostgres
    s3: S3
    proxy: S3Proxy
    source: Source

    def request(self, client: httpx.Client) -> str:
        answer = client.post(
            f"{API}/transactions", json={"definition": "orders", "batch_size": BATCH_SIZE, "force": True}
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def header(self, tx_id: str) -> Header | None:
        try:
            return self.store.find(tx_id)
        except Exception:  # the store may be the fault under test
            return None

    def wait_header(self, tx_id: str, until: Callable[[Header], bool], timeout: float = 240) -> Header:
        deadline = time.monotonic() + timeout
        header = None
        while time.monotonic() < deadline:
            header = self.header(tx_id)
            if header is not None and until(header):
                return header
            time.sleep(0.1)
        raise AssertionError(f"{tx_id}: not reached in {timeout:.0f} s; header {header}\n{self.logs()}")

    def wait_terminal(self, tx_id: str, timeout: float = 300) -> Header:
        return self.wait_header(tx_id, lambda h: h.state in TERMINAL, timeout)

    def task_instances(self, client: httpx.Client, tx_id: str) -> list[dict[str, Any]]:
        url = f"/api/v2/dags/export_transaction/dagRuns/{quote(tx_id, safe='')}/taskInstances"
        answer = client.get(url, params={"limit": 100})
        answer.raise_for_status()
        return sorted(answer.json()["task_instances"], key=lambda t: (t["task_id"], t["map_index"]))

    def logs(self, lines: int = 30) -> str:
        out = []
        for name in ("scheduler", "api-server"):
            path = self.stack.home / "logs" / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def faults(session_dir: Path) -> Iterator[Faults]:
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        with orders_source("export_tx_faults_data", SOURCE_ROWS) as source, moto_s3() as s3:
            proxy = S3Proxy(int(s3.endpoint.rsplit(":", 1)[1]))
            stack = AirflowStack(
                session_dir / "faults-stack",
                port=free_port(),
                extra_env={
                    "EXPORT_TX_STORE_CONN_ID": "export_tx_store",
                    "AIRFLOW_CONN_EXPORT_TX_STORE": pg.dsn,
                    "AIRFLOW_CONN_EXPORT_SOURCE_PG": source.dsn,
                    "EXPORT_TX_STORAGE_URI": f"s3://export_s3@{s3.bucket}/exports",
                    "AIRFLOW_CONN_EXPORT_S3": json.dumps(s3.connection(proxy.endpoint)),
                    "EXPORT_TX_RETRY_DELAY_SECONDS": "1",
                    "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",
                    # A task whose process died is failed (and retried) within seconds, not minutes.
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                },
            )
            store = HeaderStore("postgresql+psycopg://" + pg.dsn.split("://", 1)[1])
            try:
                store.ensure_schema()
                stack.migrate()
                stack.start()
                stack.wait_ready(timeout=240)
                yield Faults(stack, store, pg, s3, proxy, source)
            finally:
                stack.stop()
                proxy.close()
                store.engine.dispose()
    finally:
        pg.remove()
