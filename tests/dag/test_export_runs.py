"""Whole export runs with ``dag.test(logical_date=None)``, on the embedded SQLite default and on
PostgreSQL (source and header store), asserting on the data that comes out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from export_tx import pipeline, storage
from export_tx.catalog import registry
from export_tx.states import State
from tests.helpers import (
    assert_only_finished_parts,
    demo_source_rows,
    file_sha256,
    local_path,
    read_result,
    run_export,
    store,
)

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")


def _assert_clean_success(run: Any, expected_rows: int) -> Any:
    assert run.state == "success"
    header = store().get(run.run_id)
    assert header.state == State.SUCCEEDED, header.error
    assert header.result_rows == header.rows_written == header.rows_planned == expected_rows
    assert header.batches_done == header.batches_total
    path = local_path(header.result_uri or "")
    assert path.stat().st_size == header.result_bytes
    assert file_sha256(path) == header.result_sha256
    assert pq.ParquetFile(path).metadata.num_rows == expected_rows
    assert not storage.parts_dir(run.run_id).exists(), "parts must be removed after publishing"
    assert not storage.temp_result_path(run.run_id, header.definition).exists()
    return header


def test_demo_export_equals_the_source(demo_db: Path) -> None:
    conf = {
        "definition": "demo_orders",
        "params": {"status": "shipped", "since": "2025-03-01", "until": "2026-06-30"},
        "batch_size": 1000,
    }
    run = run_export(conf)
    source = demo_source_rows(
        demo_db,
        "status = ? AND created_at >= ? AND created_at < date(?, '+1 day')",
        ("shipped", "2025-03-01", "2026-06-30"),
    )
    assert len(source) > 2000  # the filter leaves several batches
    header = _assert_clean_success(run, len(source))
    assert header.batches_total == -(-len(source) // 1000)
    assert header.requested_by == "dag_test"
    exported = read_result(header.result_uri or "")
    assert exported == source  # every row and every value, in key order
    assert header.result_schema is not None and header.result_schema[9] == {
        "name": "created_at",
        "source_type": "TIMESTAMP",  # SQLite's declared type decides: no schema in the definition
        "type": "timestamp[us]",
        "note": "ISO text read as a timestamp",
    }
    events = store().events(run.run_id)
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["state", "state", "plan"] and kinds.count("batch") == header.batches_total
    assert kinds[-2:] == ["state", "cleanup"]
    # Each batch and the merge report their process' peak memory (the kernel's high-water mark);
    # the merge's is counted from its own start, after the batch's buffers were given back.
    batch_peaks = [(e.data or {})["peak_rss_bytes"] for e in events if e.kind == "batch"]
    assert len(batch_peaks) == header.batches_total and all(p > 50 * 2**20 for p in batch_peaks)
    assert events[-2].message.startswith(f"SUCCEEDED: {len(source):,} rows")
    merge_peak = (events[-2].data or {})["peak_rss_bytes"]
    assert merge_peak > 50 * 2**20  # a Python process with Arrow loaded


def test_zero_rows_give_a_valid_empty_file() -> None:
    run = run_export({"definition": "demo_orders", "params": {"until": "2024-01-01"}})
    header = _assert_clean_success(run, 0)
    assert header.batches_total == 0
    table = pq.read_table(local_path(header.result_uri or ""))
    assert table.num_rows == 0
    assert table.schema.names[:2] == ["order_id", "customer_id"] and len(table.schema) == 12
    assert str(table.schema.field("amount").type) == "double"


@pytest.fixture
def postgres_everything(pg_orders: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Source and header store both on the real PostgreSQL, through Airflow connections."""
    monkeypatch.setenv("AIRFLOW_CONN_EXPORT_TX_STORE", pg_orders)
    monkeypatch.setenv("EXPORT_TX_STORE_CONN_ID", "export_tx_store")
    yield pg_orders


def test_postgres_export_equals_the_source_with_emails_masked(postgres_everything: str) -> None:
    run = run_export({"definition": "orders", "params": {"since": "2025-06-01"}, "batch_size": 2500})
    with psycopg.connect(postgres_everything) as conn:
        source = conn.execute(
            r"""SELECT order_id, customer_id, regexp_replace(customer_email, '^([^@])[^@]*@', '\1***@'),
                       status, amount, currency, quantity, product_sku, country, created_at, updated_at, note
                FROM orders WHERE created_at >= DATE '2025-06-01' ORDER BY order_id"""
        ).fetchall()
    header = _assert_clean_success(run, len(source))
    assert "postgresql" in store().url
    assert header.batches_total == -(-len(source) // 2500) and header.batches_total >= 5
    exported = read_result(header.result_uri or "")
    assert exported == [tuple(r) for r in source]
    assert exported[0][2].split("@")[0].endswith("***")
    assert isinstance(exported[0][4], Decimal)  # numeric stays a decimal, not text
    schema = {c["name"]: c["type"] for c in header.result_schema or []}
    assert schema["amount"] == "decimal128(12, 2)" and schema["created_at"] == "timestamp[us, tz=UTC]"


def test_a_batch_failing_for_good_fails_the_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 half-writes its part and dies on every attempt (a full disk)."""
    real = pipeline.export_batch
    attempts: list[int] = []

    def full_disk(st: Any, tx_id: str, batch_no: int) -> pipeline.BatchResult:
        if batch_no != 2:
            return real(st, tx_id, batch_no)
        attempts.append(batch_no)
        part = storage.part_path(tx_id, batch_no)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"PAR1 half a part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "export_batch", full_disk)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000})
    assert run.state == "failed"
    assert attempts == [2, 2, 2]  # the first try and two retries
    header = store().get(run.run_id)
    assert header.state == State.FAILED
    assert header.error == (
        "batch 2 failed (OSError: [Errno 28] No space left on device); the Airflow task log has the details"
    )
    assert header.result_uri is None and header.rows_written == 1000  # batch 1 alone finished
    result_dir = storage.tx_root(run.run_id) / "result"
    assert not result_dir.exists() or list(result_dir.iterdir()) == [], "nothing may be published"
    assert_only_finished_parts(run.run_id)  # batch 1's part, kept for POST …/retry
    assert storage.part_path(run.run_id, 1).exists() and not storage.part_path(run.run_id, 2).exists()
    events = store().events(run.run_id)
    retries = [e.message for e in events if e.kind == "retry"]
    assert len(retries) == 2 and "attempt 1 of 3, retrying" in retries[0]
    assert [e.data for e in events if e.kind == "state"][-1] == {"state": "FAILED"}
    tis = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert tis[("merge_parts", -1)] == "upstream_failed"
    assert tis[("finalize_transaction", -1)] == "failed"


def test_a_retried_batch_is_counted_once(monkeypatch: pytest.MonkeyPatch, demo_db: Path) -> None:
    """Batch 2 dies after recording its rows (before reporting success): the retry re-writes the
    part and records again, and the header still counts its rows once."""
    real, real_export = pipeline.merge_if_last, pipeline.export_batch
    failed: list[int] = []
    running: dict[str, int] = {}

    def tagged(st: Any, tx_id: str, batch_no: int) -> Any:
        running["batch"] = batch_no
        return real_export(st, tx_id, batch_no)

    def flaky(st: Any, tx_id: str) -> None:
        if running["batch"] == 2 and not failed:  # batch 2, just after recording its rows
            failed.append(2)
            raise ConnectionResetError("worker lost its connection")
        if failed and st.batch(tx_id, 2).attempts < 2:
            return  # whichever order the batches run in: the merge waits for batch 2's retry
        real(st, tx_id)

    monkeypatch.setattr(pipeline, "export_batch", tagged)
    monkeypatch.setattr(pipeline, "merge_if_last", flaky)
    run = run_export({"definition": "demo_orders", "params": {"status": "pending"}, "batch_size": 1000})
    source = demo_source_rows(demo_db, "status = ?", ("pending",))
    header = _assert_clean_success(run, len(source))
    assert failed == [2]
    assert read_result(header.result_uri or "") == source
    assert store().batch(run.run_id, 2).attempts == 2
    messages = [e.message for e in store().events(run.run_id)]
    assert any("batch 2 failed (ConnectionResetError" in m and "retrying" in m for m in messages)
    assert any(m.startswith("batch 2 re-run, counted once") for m in messages)


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [
        (
            {"definition": "demo_orders", "params": {"stauts": "paid"}},
            "params.stauts: unknown parameter of 'demo_orders'; allowed: since, status, until",
        ),
        ({"definition": "demo_orders", "params": {"since": "yesterday"}}, "params.since: 'yesterday' is not a date"),
    ],
)
def test_bad_params_are_refused_before_any_work(conf: dict[str, Any], fragment: str) -> None:
    run = run_export(conf)
    assert run.state == "failed"
    header = store().get(run.run_id)
    assert header.state == State.FAILED
    assert fragment in (header.error or "")
    assert header.batches_total is None and store().plan(run.run_id) == []
    assert not storage.tx_root(run.run_id).exists()
    tis = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert tis["begin_transaction"] == "failed" and tis["plan_batches"] == "upstream_failed"


def test_over_the_row_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    small = dataclasses.replace(registry.get("demo_orders"), max_rows=100)
    monkeypatch.setitem(registry.definitions(), "demo_orders", small)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}})
    header = store().get(run.run_id)
    assert run.state == "failed" and header.state == State.FAILED
    assert "over the 100 allowed for 'demo_orders'; narrow it with params" in (header.error or "")
    assert header.error.startswith("planning: the export matches 2,000 rows")  # type: ignore[union-attr]
    assert store().plan(run.run_id) == []
    assert not storage.tx_root(run.run_id).exists()


def test_a_result_published_while_the_store_was_down_is_removed_with_the_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The merge renames the file into place, then cannot record SUCCEEDED (a store outage through
    all its retries): the transaction ends FAILED and no file of it is left, the result included."""
    import sqlalchemy as sa

    from export_tx.store import HeaderStore

    real = HeaderStore.transition

    def outage(self: HeaderStore, tx_id: str, target: State, message: str, **kw: Any) -> bool:
        if target == State.SUCCEEDED:
            raise sa.exc.OperationalError("UPDATE export_header", {}, Exception("server closed the connection"))
        return real(self, tx_id, target, message, **kw)

    monkeypatch.setattr(HeaderStore, "transition", outage)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "failed" and header.state == State.FAILED
    assert "merging failed (OperationalError" in (header.error or "")
    assert len([e for e in store().events(run.run_id) if e.kind == "retry"]) == 3  # transient: retried
    assert_only_finished_parts(run.run_id)  # the result included: only finished batches' parts are kept


def test_merge_refuses_to_publish_when_rows_do_not_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the stored batch rows and the parts disagree, nothing is published."""
    from export_tx.store import HeaderStore

    real = HeaderStore.record_batch

    def lying(self: HeaderStore, tx_id: str, batch_no: int, *, rows: int, **kw: Any) -> bool | None:
        # Batch 1's part holds N rows, its record claims N + 1.
        return real(self, tx_id, batch_no, rows=rows + 1 if batch_no == 1 else rows, **kw)

    monkeypatch.setattr(HeaderStore, "record_batch", lying)
    run = run_export({"definition": "demo_orders", "params": {"status": "returned"}, "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "failed" and header.state == State.FAILED
    assert "the merged file holds 1,000 rows but the batches recorded 1,001; nothing was published" in (
        header.error or ""
    )
    assert header.result_uri is None
    result_dir = storage.tx_root(run.run_id) / "result"
    assert not result_dir.exists() or list(result_dir.iterdir()) == []
