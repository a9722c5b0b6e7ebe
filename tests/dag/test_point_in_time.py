"""Point-in-time exports as whole runs with ``dag.test()``: the table changes between batches (the first
batch to read changes it, once; ``dag.test()`` runs the batches one after the other). Without
``consistent_snapshot`` the file mixes two moments; with it, the file is the source as it was when the
snapshot was taken, value by value — held, as ``dag.test()`` has no triggerer, by a thread of this process."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from export_tx.api import views
from export_tx.catalog import registry
from export_tx.states import SnapshotState, State
from tests import point_in_time as pit
from tests.helpers import export_dag, read_result, run_export, store

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")


@pytest.fixture(scope="module")
def accounts(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("pit_definitions")
    pit.write_definitions(folder)
    mp = pytest.MonkeyPatch()
    mp.setenv(f"AIRFLOW_CONN_{pit.CONN_ID.upper()}", pg_database)
    mp.setenv(pit.DSN_VARIABLE, pg_database)
    mp.setenv("EXPORT_TX_SNAPSHOT_POLL_SECONDS", "0.2")
    mp.setenv("EXPORT_TX_DEFINITIONS_PATH", os.pathsep.join([os.environ["EXPORT_TX_DEFINITIONS_PATH"], str(folder)]))
    registry.clear_cache()
    export_dag.cache_clear()  # its definition Param lists the registered names
    try:
        yield pg_database
    finally:
        mp.undo()
        registry.clear_cache()
        export_dag.cache_clear()


def _run(name: str) -> tuple[Any, Any]:
    run = run_export({"definition": name, "batch_size": pit.BATCH_SIZE})
    return run, store().get(run.run_id)


def _released(tx_id: str, timeout: float = 20) -> Any:
    """The header once the holder (a thread of this process) has let the snapshot go."""
    deadline = time.monotonic() + timeout
    while True:
        header = store().get(tx_id)
        if header.snapshot_state != SnapshotState.HELD or time.monotonic() > deadline:
            return header
        time.sleep(0.1)


def test_without_the_opt_in_the_file_mixes_two_moments(accounts: str) -> None:
    before = pit.reset(accounts)
    run, header = _run(pit.LIVE)
    assert run.state == "success" and header.state == State.SUCCEEDED, header.error
    after = pit.rows(accounts)
    _at, key = pit.fired(accounts)
    plan = store().plan(run.run_id)
    assert len(plan) == 3
    first = pit.firing_batch(plan, key)
    expected = pit.mixed(before, after, first.lo, first.hi)
    exported = read_result(header.result_uri or "")
    # The batch that changed the table read it before; every other batch after: two moments in one file.
    assert exported == expected
    assert exported != before and exported != after
    assert header.snapshot_state is None and views.transaction(header).point_in_time is None
    tis = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert tis["hold_snapshot"] == "skipped"  # no snapshot asked for: no instance, no process


def test_with_the_opt_in_every_batch_reads_the_snapshot(accounts: str) -> None:
    before = pit.reset(accounts)
    run, header = _run(pit.AS_OF)
    assert run.state == "success" and header.state == State.SUCCEEDED, header.error
    fired_at, _key = pit.fired(accounts)
    after = pit.rows(accounts)
    assert after != before  # the table did change while the export ran …
    exported = read_result(header.result_uri or "")
    assert exported == before  # … and the file is the source as it was, value by value
    assert Decimal("1000000") > max(r[1] for r in exported)  # no updated balance
    assert {5005, 25005, 30010}.isdisjoint(r[0] for r in exported) and {10010, 20010} <= {r[0] for r in exported}
    # Planned, written and published counts are the snapshot's.
    assert header.rows_planned == header.rows_written == header.result_rows == len(before) == pit.ROWS
    assert header.snapshot_at is not None and header.snapshot_at < fired_at
    header = _released(run.run_id)
    assert header.snapshot_state == SnapshotState.RELEASED
    status = views.transaction(header).point_in_time
    assert status is not None and status.state == "released" and status.as_of == header.snapshot_at
    events = store().events(run.run_id, limit=1000)
    said = [e.message for e in events if e.kind == "snapshot"]
    assert said[0].startswith("point-in-time export: a snapshot of the source is being taken")
    assert said[1].startswith("point-in-time: the source is read as of ")
    assert "dag.test() runs no triggerer" in said[1]
    plan_event = next(e for e in events if e.kind == "plan")
    assert "point-in-time: the source as of " in plan_event.message
    assert (plan_event.data or {})["snapshot_at"] == header.snapshot_at.isoformat()
