from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.stack import AirflowStack
from tests.smtp import SmtpServer, free_port

USERS = "admin:admin,analyst:user,viewer:viewer,bob:user"
# One scheduled bulk export that the real scheduler runs once, as soon as it parses it.
BULK_EXPORTS = """
exports:
  - name: e2e_once
    definition: demo_orders
    params: {status: paid}
    schedule: "@once"
    start_date: 2026-01-01
    catchup: false
    batch_size: 1000
    owner: analyst
"""


@pytest.fixture(scope="session")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def airflow_metadata() -> Iterator[str]:
    """Airflow's metadata database for the shared stack: a fresh PostgreSQL database, as in
    production. Under the load these tests put on it (50 exports at once), the embedded SQLite
    database makes requests wait for its single writer lock for up to its 30 s timeout. (The
    embedded default itself is run end to end by ``test_demo.py``, ``tests/faults`` and the bench.)"""
    from tests.deploy import fresh_database

    with fresh_database("export_tx_e2e_meta") as dsn:
        yield "postgresql+psycopg2://" + dsn.split("://", 1)[1]


@pytest.fixture(scope="session")
def stack(
    session_dir: Path, demo_db: Path, smtp: SmtpServer, type_matrix: str, airflow_metadata: str
) -> Iterator[AirflowStack]:
    """One real Airflow stack (api-server with our plugin, scheduler, dag-processor, triggerer),
    shared by every end-to-end test of the session. Its components see the PostgreSQL source
    (connection ``export_source_pg``, with the type matrix) and the team's definition folder."""
    bulk = session_dir / "bulk_exports.yaml"
    bulk.write_text(BULK_EXPORTS)
    s = AirflowStack(
        session_dir / "stack",
        port=free_port(),
        extra_env={
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_metadata,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp.connection_json(),
            "EXPORT_TX_NOTIFY_POLL_SECONDS": "0.5",
            "EXPORT_TX_MAIL_FROM": "exports@example.com",
            "EXPORT_TX_BULK_EXPORTS": str(bulk),
            "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",  # the tests trigger it
            "EXPORT_TX_RECONCILE_GRACE_SECONDS": "0",
            # The opt-in preload in LocalExecutor's workers: every end-to-end export runs in task
            # processes forked with pyarrow and this library already imported (the default, auto,
            # preloads in Celery workers only; tests/celery runs with it).
            "EXPORT_TX_PRELOAD": "on",
        },
    )
    s.migrate()
    s.start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def clients(stack: AirflowStack) -> Iterator[dict[str, httpx.Client]]:
    opened = {user: stack.client(user) for user in ("admin", "analyst", "viewer", "bob")}
    try:
        yield opened
    finally:
        for c in opened.values():
            c.close()


def tx_url(tx_id: str) -> str:
    from urllib.parse import quote

    return f"/exports/v1/transactions/{quote(tx_id, safe='')}"


def wait_status(client: httpx.Client, tx_id: str, until: Any, timeout: float = 180) -> dict[str, Any]:
    """Poll the status resource until ``until(status)`` holds."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = client.get(tx_url(tx_id)).json()
        if until(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"condition not reached for {tx_id}; last status {last}")


def terminal(status: dict[str, Any]) -> bool:
    return status.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")


@contextmanager
def held_slots(admin: httpx.Client) -> Iterator[Callable[[int], None]]:
    """The shared stack as a full deployment: the default pool's slots set to 0 through Airflow's
    REST API (what a platform team does to hold work back), so no task that has not started yet
    starts, and requested exports wait in line (``REQUESTED``). Yields ``open_slots(n)`` to let
    tasks through meanwhile; the pool's slots are put back however the test ends. Tasks already
    running go on; other exports of the stack wait only while this lasts."""
    url = "/api/v2/pools/default_pool"
    answer = admin.get(url)
    answer.raise_for_status()
    before = int(answer.json()["slots"])

    def open_slots(n: int) -> None:
        admin.patch(url, params={"update_mask": "slots"}, json={"slots": n}).raise_for_status()

    open_slots(0)
    try:
        yield open_slots
    finally:
        open_slots(before)


def task_states(
    client: httpx.Client, run_id: str, dag_id: str = "export_transaction"
) -> dict[tuple[str, int], str | None]:
    from urllib.parse import quote

    answer = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", params={"limit": 100})
    answer.raise_for_status()
    return {(t["task_id"], t["map_index"]): t["state"] for t in answer.json()["task_instances"]}


def wait_task(
    client: httpx.Client,
    run_id: str,
    task_id: str,
    states: set[str],
    timeout: float = 120,
    dag_id: str = "export_transaction",
) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        try:
            state = task_states(client, run_id, dag_id).get((task_id, -1))
        except httpx.HTTPStatusError:  # the run may not exist yet
            state = None
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{task_id} of {run_id} is {state}, not one of {states}")


# -- the browser (Playwright on Debian's Chromium) ------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


# Module-scoped, never session-scoped: while Playwright's sync API is open, its event loop counts as
# running in the main thread, and later tests' asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (make test installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def artifact(session_dir: Path, name: str) -> str:
    """Screenshots go to $EXPORT_TX_TEST_ARTIFACTS when set (kept after the run), else the session dir."""
    folder = Path(os.environ.get("EXPORT_TX_TEST_ARTIFACTS") or session_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def page_as(browser: Any, stack: AirflowStack, user: str) -> Any:
    """A browser session logged in like the Airflow UI: the JWT in Airflow's ``_token`` cookie."""
    context = browser.new_context(base_url=stack.base_url)
    context.add_cookies([{"name": "_token", "value": stack.token(user), "url": stack.base_url}])
    return context.new_page()
