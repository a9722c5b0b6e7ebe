"""Point-in-time exports on a real Airflow stack of their own (scheduler, dag-processor, api-server,
triggerer; LocalExecutor): the snapshot is held by the triggerer, through a deferred ``hold_snapshot``.

Batches run one at a time here (their pool has one slot), and the first batch to read rows changes the
table, once (``tests/point_in_time.py``): every later batch reads after the change. Without
``consistent_snapshot`` the file mixes two moments; with it the file is the source as it was when the
snapshot was taken, value by value. And when the triggerer stops while it holds the snapshot, the export
fails saying so — it never reads another moment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.stack import AirflowStack
from export_tx.states import SnapshotState, State
from export_tx.store import Header
from tests import point_in_time as pit
from tests.e2e.conftest import task_states, tx_url
from tests.helpers import read_result, store
from tests.smtp import free_port

pytestmark = pytest.mark.stack

POOL = "pit_serial"


@dataclass
class Pit:
    stack: AirflowStack
    dsn: str

    def export(self, client: httpx.Client, definition: str) -> str:
        run = self.stack.trigger(client, {"definition": definition, "batch_size": pit.BATCH_SIZE})
        return str(run["dag_run_id"])


@pytest.fixture(scope="module")
def pit_stack(session_dir: Path, pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pit]:
    folder = tmp_path_factory.mktemp("pit_e2e_definitions")
    pit.write_definitions(folder)
    bulk = folder / "no_bulk_exports.yaml"
    bulk.write_text("exports: []\n")
    stack = AirflowStack(
        session_dir / "pit-stack",
        port=free_port(),
        extra_env={
            "EXPORT_TX_DEFINITIONS_PATH": os.pathsep.join([os.environ["EXPORT_TX_DEFINITIONS_PATH"], str(folder)]),
            "EXPORT_TX_BATCH_POOL": POOL,
            f"AIRFLOW_CONN_{pit.CONN_ID.upper()}": pg_database,
            pit.DSN_VARIABLE: pg_database,
            "EXPORT_TX_SNAPSHOT_POLL_SECONDS": "0.5",
            "EXPORT_TX_RETRY_DELAY_SECONDS": "1",
            "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",
            "EXPORT_TX_BULK_EXPORTS": str(bulk),
        },
    )
    try:
        stack.migrate()
        import subprocess

        subprocess.run(["airflow", "pools", "set", POOL, "1", "export batches one at a time"], env=stack.env(),
                       check=True, capture_output=True)  # fmt: skip
        stack.start()
        stack.wait_ready(timeout=240)
        yield Pit(stack, pg_database)
    finally:
        stack.stop()


def _until(what: str, condition: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout:.0f} s: {what}")


def _snapshot_events(tx: str) -> list[str]:
    return [e.message for e in store().events(tx, limit=1000) if e.kind == "snapshot"]


def test_held_in_the_triggerer_every_batch_reads_the_snapshot(pit_stack: Pit) -> None:
    before = pit.reset(pit_stack.dsn)
    with pit_stack.stack.client("admin") as client:
        tx = pit_stack.export(client, pit.AS_OF)
        assert pit_stack.stack.wait_run(client, tx, timeout=300) == "success"
        states = task_states(client, tx)
        status = client.get(tx_url(tx)).json()
    header = store().get(tx)
    assert header.state == State.SUCCEEDED, header.error
    fired_at, _key = pit.fired(pit_stack.dsn)
    assert pit.rows(pit_stack.dsn) != before  # the table changed while the batches ran …
    assert read_result(header.result_uri or "") == before  # … and the file is the snapshot, value by value
    assert header.rows_planned == header.rows_written == header.result_rows == pit.ROWS
    assert header.batches_total == 3
    assert header.snapshot_at is not None and header.snapshot_at < fired_at
    # Held by the triggerer, through the deferred hold_snapshot, released once the batches had read.
    assert states[("hold_snapshot", 0)] == "success"
    said = _snapshot_events(tx)
    assert "(its snapshot is held by Airflow's triggerer)" in said[1]
    assert header.snapshot_state == SnapshotState.RELEASED
    assert status["point_in_time"]["state"] == "released"
    assert status["point_in_time"]["as_of"].startswith(header.snapshot_at.strftime("%Y-%m-%dT%H:%M:%S"))


def test_without_the_opt_in_the_same_run_mixes_two_moments(pit_stack: Pit) -> None:
    before = pit.reset(pit_stack.dsn)
    with pit_stack.stack.client("admin") as client:
        tx = pit_stack.export(client, pit.LIVE)
        assert pit_stack.stack.wait_run(client, tx, timeout=300) == "success"
        states = task_states(client, tx)
        status = client.get(tx_url(tx)).json()
    header = store().get(tx)
    after = pit.rows(pit_stack.dsn)
    _at, key = pit.fired(pit_stack.dsn)
    first = pit.firing_batch(store().plan(tx), key)
    exported = read_result(header.result_uri or "")
    assert exported == pit.mixed(before, after, first.lo, first.hi)
    assert exported != before and exported != after
    assert states[("hold_snapshot", -1)] == "skipped"  # nothing to hold: no instance, no process
    assert status["point_in_time"] is None


def _holder_sessions(dsn: str, tx: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (f"export-tx snapshot {tx}",)).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


def test_the_triggerer_stopping_loses_the_snapshot_and_the_export_fails_saying_so(pit_stack: Pit) -> None:
    before = pit.reset(pit_stack.dsn)
    stack = pit_stack.stack
    # A transaction holding the table: planning waits behind it, after the snapshot was taken.
    gate = psycopg.connect(pit_stack.dsn)
    try:
        gate.execute("LOCK TABLE pit_accounts IN ACCESS EXCLUSIVE MODE")
        with stack.client("admin") as client:
            tx = pit_stack.export(client, pit.AS_OF)
        held: Header = _until("the snapshot held", lambda: (h := store().find(tx)) is not None
                              and h.snapshot_state == SnapshotState.HELD and h)  # fmt: skip
        assert _holder_sessions(pit_stack.dsn, tx) == 1
        stack.stop_component("triggerer")
        _until("the holder's session gone", lambda: _holder_sessions(pit_stack.dsn, tx) == 0, timeout=60)
    finally:
        gate.rollback()
        gate.close()
    try:
        failed = _until("the export failed", lambda: (h := store().get(tx)).terminal and h, timeout=240)
    finally:
        stack.start()  # the triggerer again: the trigger, run again, finds the export over
    assert failed.state == State.FAILED
    error = failed.error or ""
    assert "snapshot of the source" in error and "request the export again" in error, error
    assert "never reads another moment" in error
    assert failed.result_uri is None and failed.snapshot_state == SnapshotState.LOST
    assert failed.snapshot_id == held.snapshot_id  # no second snapshot was ever taken
    assert pit.rows(pit_stack.dsn) == before  # nothing was read: the hook never ran
    with stack.client("admin") as client:
        assert stack.wait_run(client, tx, timeout=300) == "failed"
        states = task_states(client, tx)
    assert states[("hold_snapshot", 0)] == "success"  # it ended with the export, never failing the run
    assert states[("plan_batches", -1)] == "failed"
