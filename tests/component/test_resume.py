"""Resuming a FAILED transaction (control.resume), against a real PostgreSQL source and header
store: refused unless the state machine allows it and the definition and its source's columns are
as they were when it was planned (each change named); finished batches whose parts are gone run
again; a run that cannot be resumed leaves it FAILED, saying why. The Airflow side (clearing the
run's failed tasks) is a recorder here; tests/faults resumes a real run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_tx import control, pipeline, storage
from export_tx.catalog import registry
from export_tx.control import NotResumable
from export_tx.states import State
from export_tx.store import HeaderStore


@pytest.fixture
def setup(pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS resumable")
        conn.execute("CREATE TABLE resumable (id BIGINT PRIMARY KEY, amount NUMERIC(10,2), note TEXT)")
        conn.execute("INSERT INTO resumable SELECT i, i / 100.0, 'n' || i FROM generate_series(1, 5000) i")
    monkeypatch.setenv("AIRFLOW_CONN_RESUME_PG", pg_database)
    monkeypatch.setenv("EXPORT_TX_STORAGE_URI", f"file://{tmp_path / 'exports'}")
    # A team's definition file, as a deployment has it.
    folder = tmp_path / "definitions"
    folder.mkdir()
    (folder / "resumable.yaml").write_text(DEFINITION)
    monkeypatch.setenv("EXPORT_TX_DEFINITIONS_PATH", str(folder))
    registry.clear_cache()
    store = HeaderStore("postgresql+psycopg://" + pg_database.split("://", 1)[1])
    store.ensure_schema()
    tx_id = f"resume-{tmp_path.name}"
    store.create(tx_id, definition="resumable", params={}, batch_size=1000, requested_by="ana")
    store.transition(tx_id, State.RUNNING, "run started")
    assert pipeline.plan(store, tx_id) == [1, 2, 3, 4, 5]
    cleared: list[tuple[str, list[int]]] = []
    yield {"store": store, "tx": tx_id, "dsn": pg_database, "cleared": cleared, "folder": folder,
           "resume_run": lambda tx, gone: cleared.append((tx, list(gone)))}  # fmt: skip
    store.engine.dispose()
    registry.clear_cache()


DEFINITION = """
description: A table whose batches are resumed.
connection: resume_pg
sql: SELECT id, amount, note FROM resumable
key_column: id
"""


def _finish(store: HeaderStore, tx_id: str, batch_no: int, with_part: bool = True) -> None:
    part = storage.part_path(tx_id, batch_no)
    if with_part:
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"a part")
    store.record_batch(tx_id, batch_no, rows=1000, nbytes=6, part_uri=str(part), duration_s=0.1)


def test_only_a_failed_transaction_is_resumed(setup: dict[str, Any]) -> None:
    store, tx = setup["store"], setup["tx"]
    with pytest.raises(NotResumable, match="the transaction is RUNNING; only a FAILED one can be resumed"):
        control.resume(store, tx, "ana", setup["resume_run"])
    assert setup["cleared"] == []


def test_a_resume_runs_what_did_not_finish_and_finished_batches_whose_parts_are_gone(
    setup: dict[str, Any],
) -> None:
    store, tx = setup["store"], setup["tx"]
    _finish(store, tx, 1)
    _finish(store, tx, 2, with_part=False)  # its part removed since (after the keep days)
    _finish(store, tx, 4)
    store.fail(tx, "batch 3: the source went away")
    resumed = control.resume(store, tx, "ana", setup["resume_run"])
    assert (resumed.rerun, resumed.kept) == ([2, 3, 5], [1, 4])
    assert setup["cleared"] == [(tx, [2])]  # the finished batch 2 is cleared in Airflow too
    header = store.get(tx)
    assert header.state == State.RUNNING and header.error is None and header.finished_at is None
    assert header.resumes == 1 and header.batches_done == 2 and header.rows_written == 2000
    assert [b.state for b in store.plan(tx)] == ["DONE", "PLANNED", "PLANNED", "DONE", "PLANNED"]
    event = store.last_event(tx, "state")
    assert event is not None and event.message.startswith("RUNNING: resumed by ana: 3 batch(es) to run again (2, 3, 5)")
    assert event.data == {"state": "RUNNING", "resumed_by": "ana", "rerun": [2, 3, 5], "kept": [1, 4], "resume": 1}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("ALTER TABLE resumable ALTER COLUMN amount TYPE NUMERIC(14,4)",
         "column 'amount' was numeric(10,2), now numeric(14,4)"),
        ("ALTER TABLE resumable DROP COLUMN note", 'column "note" does not exist'),
        ("ALTER TABLE resumable RENAME COLUMN note TO remark", 'column "note" does not exist'),
    ],
)  # fmt: skip
def test_a_source_that_changed_shape_is_refused_naming_the_column(
    setup: dict[str, Any], change: str, named: str
) -> None:
    store, tx = setup["store"], setup["tx"]
    _finish(store, tx, 1)
    store.fail(tx, "batch 2 failed")
    with psycopg.connect(setup["dsn"], autocommit=True) as conn:
        conn.execute(change)
    with pytest.raises(NotResumable, match="changed since it was planned") as refused:
        control.resume(store, tx, "ana", setup["resume_run"])
    assert named in str(refused.value) and "request the export again" in str(refused.value)
    assert store.get(tx).state == State.FAILED and setup["cleared"] == []


def test_a_changed_definition_is_refused(setup: dict[str, Any]) -> None:
    store, tx = setup["store"], setup["tx"]
    store.fail(tx, "batch 1 failed")
    changed = DEFINITION.replace("FROM resumable", "FROM resumable WHERE id > 10")
    (setup["folder"] / "resumable.yaml").write_text(changed)
    registry.clear_cache()
    with pytest.raises(NotResumable, match="the definition 'resumable' changed"):
        control.resume(store, tx, "ana", setup["resume_run"])


def test_a_run_that_cannot_be_resumed_leaves_it_failed_saying_why(setup: dict[str, Any]) -> None:
    from export_tx.api.airflow_side import RunNotResumable

    store, tx = setup["store"], setup["tx"]
    store.fail(tx, "batch 1 failed")

    def gone(*_: Any) -> None:
        raise RunNotResumable("its Airflow run no longer exists; request the export again")

    with pytest.raises(NotResumable, match="no longer exists"):
        control.resume(store, tx, "ana", gone)
    header = store.get(tx)
    assert header.state == State.FAILED
    assert header.error == "batch 1 failed (not resumed: its Airflow run no longer exists; request the export again)"


def test_a_point_in_time_export_is_not_resumed(setup: dict[str, Any]) -> None:
    """Its finished batches read a snapshot that is gone: the others would read another moment."""
    store, tx = setup["store"], setup["tx"]
    (setup["folder"] / "resumable.yaml").write_text(DEFINITION + "consistent_snapshot: true\n")
    registry.clear_cache()
    store.fail(tx, "batch 2 failed")
    with pytest.raises(NotResumable, match="point-in-time export .* request the export again"):
        control.resume(store, tx, "ana", setup["resume_run"])
    assert store.get(tx).state == State.FAILED and setup["cleared"] == []
