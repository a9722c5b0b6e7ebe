"""Bulk export declarations become DAGs; housekeeping's steps against real storage and store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from export_tx import config, storage
from export_tx.bulk import load
from export_tx.errors import BulkExportsInvalid
from export_tx.housekeeping import expire_results, reconcile, remove_leftover_parts
from export_tx.states import State
from export_tx.store import HeaderStore, utcnow
from tests.helpers import local_path, run_export, store

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bulk.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_shipped_declaration_is_valid() -> None:
    entries = load(REPO / "dags" / "bulk_exports.yaml")
    assert [e.dag_id for e in entries] == ["bulk_export__weekly_shipped_orders"]
    entry = entries[0]
    assert entry.request.params == {"status": "shipped"} and entry.request.retention_days == 14
    assert entry.catchup is False and entry.owner == "analyst" and entry.paused is True


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            "exports:\n  - {name: a, definition: demo_orders, schedule: '@daily', start_date: 2026-01-01}",
            "catchup must be set explicitly",
        ),
        (
            "exports:\n  - {name: a, definition: nope, schedule: '@daily', start_date: 2026-01-01, catchup: false}",
            "bulk export 'a': invalid request: definition: 'nope' is not a registered definition",
        ),
        (
            "exports:\n  - {name: a, definition: demo_orders, params: {stauts: x}, schedule: '@daily', "
            "start_date: 2026-01-01, catchup: false}",
            "params.stauts: unknown parameter",
        ),
        ("exports:\n  - {name: A-1, definition: demo_orders}", "name must be lower-case"),
        (
            "exports:\n  - {name: a, definition: demo_orders, start_date: 2026-01-01, catchup: true}",
            "schedule is required",
        ),
        (
            "exports:\n"
            "  - {name: a, definition: demo_orders, schedule: '@daily', start_date: 2026-01-01, catchup: true}\n"
            "  - {name: a, definition: demo_orders, schedule: '@daily', start_date: 2026-01-01, catchup: true}",
            "must be unique: a",
        ),
    ],
)
def test_bad_declarations_name_the_entry(tmp_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(BulkExportsInvalid, match=None) as info:
        load(_write(tmp_path, body))
    assert fragment in str(info.value)


def test_each_entry_becomes_a_scheduled_dag(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        exports:
          - name: daily_paid
            definition: demo_orders
            params: {status: paid}
            schedule: "30 2 * * *"
            start_date: 2026-02-01
            catchup: true
            notify_email: "ops@example.com, data@example.com"
          - name: monthly_all
            definition: orders
            schedule: "@monthly"
            start_date: 2026-01-01
            catchup: false
        """,
    )
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(REPO / 'dags' / 'bulk_exports.py')!r});"
        "assert not bag.import_errors, bag.import_errors;"
        "d = bag.dags['bulk_export__daily_paid'];"
        "t = d.get_task('trigger_export');"
        "print(sorted(bag.dag_ids), d.catchup, str(d.start_date.date()), t.trigger_dag_id, t.conf['params'],"
        " t.conf['notify_email'], bag.dags['bulk_export__monthly_all'].catchup, d.timetable.expression)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "EXPORT_TX_BULK_EXPORTS": str(path)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "['bulk_export__daily_paid', 'bulk_export__monthly_all'] True 2026-02-01 export_transaction "
        "{'status': 'paid'} ops@example.com, data@example.com False 30 2 * * *"
    )


def test_an_invalid_declaration_is_an_import_error_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "exports:\n  - {name: broken, definition: demo_orders, schedule: '@daily', "
                            "start_date: 2026-01-01, catchup: false, batch_size: 3}\n")  # fmt: skip
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(REPO / 'dags' / 'bulk_exports.py')!r});"
        "print(list(bag.import_errors.values())[0].splitlines()[-1])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "EXPORT_TX_BULK_EXPORTS": str(path)})  # fmt: skip
    assert "bulk export 'broken': invalid request: batch_size: 3 is out of range" in result.stdout


# -- housekeeping --------------------------------------------------------------------------------


@pytest.mark.usefixtures("airflow_db", "demo_db")
def test_expired_results_are_deleted() -> None:
    run = run_export({"definition": "demo_orders", "params": {"status": "returned"}})
    header = store().get(run.run_id)
    path = local_path(header.result_uri or "")
    assert path.exists()
    untouched = run_export({"definition": "demo_orders", "params": {"status": "cancelled"}})
    store().update(run.run_id, expires_at=utcnow() - timedelta(seconds=1))
    report = expire_results(store())
    assert run.run_id in report.transactions and untouched.run_id not in report.transactions
    assert store().get(run.run_id).state == State.EXPIRED
    assert not path.exists()
    assert local_path(store().get(untouched.run_id).result_uri or "").exists()
    assert store().last_event(run.run_id, "state").message.startswith("EXPIRED: retention ended")  # type: ignore[union-attr]
    assert run.run_id not in expire_results(store()).transactions  # nothing twice


def _active_header(s: HeaderStore, tx: str) -> None:
    s.create(tx, definition="demo_orders", params={}, batch_size=1000, requested_by="ana",
             notify_email="ana@example.com")  # fmt: skip
    s.transition(tx, State.RUNNING, "started")


def _finished_batch(s: HeaderStore, tx: str) -> None:
    """A plan of two batches, the first one finished (its part written and recorded)."""
    from export_tx.store import PlannedBatch

    s.save_plan(tx, [PlannedBatch(1, 1, 100, 99), PlannedBatch(2, 100, None, 50)], batch_size=100, note="test")
    part = storage.part_path(tx, 1)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"a finished batch")
    s.record_batch(tx, 1, rows=99, nbytes=16, part_uri=str(part), duration_s=0.1)


def test_leftover_parts_of_ended_transactions_are_removed() -> None:
    """Parts of a cancelled transaction go at once; a FAILED one's finished parts stay for
    EXPORT_TX_RESUME_KEEP_DAYS (POST …/retry re-runs only the others), then go too."""
    s = store()
    pid = os.getpid()
    cancelled, failed, old, running = (f"hk-{k}-{pid}" for k in ("cancelled", "failed", "old", "running"))
    for tx in (cancelled, failed, old, running):
        _active_header(s, tx)
        _finished_batch(s, tx)
        half = storage.part_path(tx, 2)
        half.write_bytes(b"half a part of an unfinished batch")
        tmp = storage.temp_result_path(tx, "demo_orders")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"half a merge")
    s.fail(cancelled, "cancelled by ana", state=State.CANCELLED, cancelled_by="ana")
    s.fail(failed, "boom")
    s.fail(old, "boom, long ago")
    with s.engine.begin() as conn:
        from export_tx.store import headers

        long_ago = utcnow() - timedelta(days=config.RESUME_KEEP_DAYS_DEFAULT, hours=1)
        conn.execute(headers.update().where(headers.c.id == old).values(finished_at=long_ago))
    report = remove_leftover_parts(s)
    assert {cancelled, failed, old} <= set(report.transactions) and running not in report.transactions
    assert not storage.tx_root(cancelled).exists() and not storage.tx_root(old).exists()
    # Failed within the keep days: the half-merged file and the unfinished batch's part are gone, the
    # finished batch's part stays.
    assert storage.part_path(failed, 1).exists() and not storage.temp_result_path(failed, "demo_orders").exists()
    assert not storage.part_path(failed, 2).exists()
    assert "but the finished batches' parts (kept for POST …/retry)" in s.last_event(failed, "cleanup").message  # type: ignore[union-attr]
    assert storage.part_path(running, 1).exists()  # a running export keeps its parts
    assert "housekeeping removed the files left by" in s.last_event(cancelled, "cleanup").message  # type: ignore[union-attr]
    assert not {cancelled, failed, old} & set(remove_leftover_parts(s).transactions)


def test_a_partial_file_is_kept_until_its_retention_ends() -> None:
    """A cancelled transaction's partial file (keep_partial) survives the cleanup of its parts and
    is deleted once its retention ends; the transaction stays CANCELLED, its download then 410."""
    from export_tx.housekeeping import expire_partials

    s = store()
    kept, ended = f"hk-partial-{os.getpid()}", f"hk-partial-old-{os.getpid()}"
    for tx, expires in ((kept, utcnow() + timedelta(days=1)), (ended, utcnow() - timedelta(minutes=1))):
        _active_header(s, tx)
        part = storage.part_path(tx, 2)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"an unfinished batch")
        partial = storage.partial_path(tx, "demo_orders")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"the finished batches")
        s.fail(tx, "cancelled by ana", state=State.CANCELLED, cancelled_by="ana")
        s.update(tx, result_uri=str(partial), result_partial=True, expires_at=expires,
                 result_ranges=[{"batch_no": 1, "from": 1, "below": 1000, "rows": 999}])  # fmt: skip
    remove_leftover_parts(s)
    for tx in (kept, ended):
        assert not storage.parts_dir(tx).exists() and storage.partial_path(tx, "demo_orders").exists()
    assert expire_partials(s).transactions == [ended]
    assert (
        storage.partial_path(kept, "demo_orders").exists() and not storage.partial_path(ended, "demo_orders").exists()
    )
    header = s.get(ended)
    assert header.state == State.CANCELLED and header.result_uri is None
    assert "the partial file's retention ended" in s.last_event(ended, "cleanup").message  # type: ignore[union-attr]
    assert expire_partials(s).transactions == []
    remove_leftover_parts(s)
    assert not storage.tx_root(ended).exists() and storage.partial_path(kept, "demo_orders").exists()


def test_reconcile_closes_headers_whose_run_ended_or_vanished() -> None:
    s = store()
    suffix = os.getpid()
    deleted, failed, running, fresh = (f"hk-{k}-{suffix}" for k in ("deleted", "failed", "running", "fresh"))
    for tx in (deleted, failed, running, fresh):
        _active_header(s, tx)
    _finished_batch(s, failed)
    runs = {deleted: None, failed: "failed", running: "running", fresh: None}
    # Everything but "fresh" was last touched long ago.
    with s.engine.begin() as conn:
        from export_tx.store import headers

        conn.execute(headers.update().where(headers.c.id.in_([deleted, failed, running]))
                     .values(updated_at=utcnow() - timedelta(hours=1)))  # fmt: skip
    report = reconcile(s, runs.get, grace=timedelta(minutes=5))
    assert sorted(report.transactions) == sorted([deleted, failed])
    assert s.get(deleted).state == State.FAILED and "no longer exists (deleted)" in (s.get(deleted).error or "")
    assert s.get(deleted).notification_state == "skipped"
    assert s.get(failed).state == State.FAILED and "ended failed before the export finished" in (
        s.get(failed).error or ""
    )
    assert storage.part_path(failed, 1).exists()  # resumable: its finished batches' parts are kept
    assert s.get(running).state == State.RUNNING and s.get(fresh).state == State.RUNNING


def test_reconcile_says_when_an_accepted_export_never_got_its_run() -> None:
    """The api-server answered 202 and stopped before creating the run (a burst's runs are created
    just after the burst is answered): housekeeping closes it, saying what happened."""
    s = store()
    accepted = f"hk-accepted-{os.getpid()}"
    s.create(accepted, definition="demo_orders", params={}, batch_size=None, requested_by="ana")
    with s.engine.begin() as conn:
        from export_tx.store import headers

        conn.execute(headers.update().where(headers.c.id == accepted).values(updated_at=utcnow() - timedelta(hours=1)))
    only_it_has_no_run = {accepted: None}.get  # every other header of the shared store: still running
    assert reconcile(s, lambda tx: only_it_has_no_run(tx, "running"), grace=timedelta(minutes=5)).transactions == [
        accepted
    ]
    header = s.get(accepted)
    assert header.state == State.FAILED
    assert (
        header.error == "the export was accepted but never started (its Airflow run was not created); request it again"
    )


def test_a_bulk_run_id_started_by_hand_is_refused_and_the_bulk_export_says_so() -> None:
    """Anyone may start an export run with any id through Airflow's API; an id a scheduled bulk
    export will use later must not make that export vanish silently."""
    from export_tx import bulk, pipeline
    from export_tx.errors import RequestInvalid

    entry = load(REPO / "dags" / "bulk_exports.yaml")[0]
    tx = entry.tx_id(utcnow())
    s = store()
    with pytest.raises(RequestInvalid, match="dag_run_id: run ids starting with bulk__ are reserved"):
        pipeline.begin(s, tx, {"definition": "demo_orders"}, "mallory", triggered_by="rest_api")
    assert s.get(tx).state == State.FAILED and s.get(tx).requested_by == "mallory"
    with pytest.raises(bulk.BulkRunIdTaken, match="was taken by a run mallory started by hand"):
        bulk.request_export(entry, tx)
    # The bulk export's own run (its trigger operator) is accepted.
    own = entry.tx_id(utcnow() + timedelta(days=7))
    assert bulk.request_export(entry, own) == own
    header = pipeline.begin(s, own, entry.request.as_conf(), entry.owner, triggered_by="operator")
    assert header.state == State.RUNNING and header.requested_by == "analyst"
