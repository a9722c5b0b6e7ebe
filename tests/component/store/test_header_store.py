"""The header store on the embedded SQLite and the real PostgreSQL, same tests for both."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from export_tx.errors import IllegalTransition, NotFound
from export_tx.states import State
from export_tx.store import HeaderStore, PlannedBatch


def _new(store: HeaderStore, **kw: object) -> str:
    tx = f"tx-{uuid.uuid4().hex}"
    header, created = store.create(
        tx, definition="demo_orders", params={"status": "paid"}, batch_size=1000, requested_by="ana", **kw
    )
    assert created and header.state == State.REQUESTED
    return tx


def test_create_is_idempotent(store: HeaderStore) -> None:
    tx = _new(store, notify_email="ana@example.com")
    again, created = store.create(tx, definition="other", params={}, batch_size=5, requested_by="bob")
    assert not created
    assert (again.definition, again.requested_by, again.params) == ("demo_orders", "ana", {"status": "paid"})
    assert again.notification_state == "pending"
    assert [e.message for e in store.events(tx)] == ["REQUESTED: requested by ana"]


def test_happy_path_and_terminal_states(store: HeaderStore) -> None:
    tx = _new(store)
    assert store.transition(tx, State.RUNNING, "started")
    assert not store.transition(tx, State.RUNNING, "started again")  # a retried step: no-op
    assert store.transition(tx, State.MERGING, "merging")
    assert store.transition(tx, State.SUCCEEDED, "done", result_rows=5, result_sha256="ab")
    header = store.get(tx)
    assert header.state == State.SUCCEEDED and header.result_rows == 5 and header.finished_at is not None
    assert header.started_at is not None and header.started_at <= header.finished_at
    for target in (State.FAILED, State.CANCELLED, State.RUNNING, State.SUCCEEDED):
        with pytest.raises(IllegalTransition):
            store.transition(tx, target, "nope")
    assert not store.fail(tx, "too late")
    assert store.get(tx).state == State.SUCCEEDED and store.get(tx).error is None
    assert store.transition(tx, State.EXPIRED, "retention ended")
    with pytest.raises(IllegalTransition):
        store.transition(tx, State.SUCCEEDED, "back")
    states = [e.data["state"] for e in store.events(tx) if e.kind == "state" and e.data]
    assert states == ["REQUESTED", "RUNNING", "MERGING", "SUCCEEDED", "EXPIRED"]


def test_illegal_jump_is_refused_and_changes_nothing(store: HeaderStore) -> None:
    tx = _new(store)
    with pytest.raises(IllegalTransition, match="REQUESTED; it cannot become SUCCEEDED"):
        store.transition(tx, State.SUCCEEDED, "skip ahead")
    assert store.get(tx).state == State.REQUESTED
    assert len(store.events(tx)) == 1


def test_fail_records_the_message(store: HeaderStore) -> None:
    tx = _new(store)
    store.transition(tx, State.RUNNING, "started")
    assert store.fail(tx, "batch 3 failed")
    header = store.get(tx)
    assert header.state == State.FAILED and header.error == "batch 3 failed"
    assert not store.fail(tx, "again")
    assert store.get(tx).error == "batch 3 failed"


def test_unknown_transaction(store: HeaderStore) -> None:
    with pytest.raises(NotFound):
        store.get("missing")
    assert store.find("missing") is None
    with pytest.raises(NotFound):
        store.transition("missing", State.RUNNING, "x")


def test_plan_is_stored_once_and_batches_count_once(store: HeaderStore) -> None:
    tx = _new(store)
    plan = [PlannedBatch(1, 10, 20, 100), PlannedBatch(2, 20, "k", 100), PlannedBatch(3, "k", None, 50)]
    stored = store.save_plan(tx, plan, batch_size=100, note="planned 3")
    assert [(b.batch_no, b.lo, b.hi, b.planned_rows) for b in stored] == [
        (1, 10, 20, 100),
        (2, 20, "k", 100),
        (3, "k", None, 50),
    ]
    # A retried planner gets the stored plan back, whatever it computes now.
    again = store.save_plan(tx, [PlannedBatch(1, 0, None, 999)], batch_size=999, note="replanned")
    assert again == stored
    header = store.get(tx)
    assert (header.batches_total, header.rows_planned, header.batch_size) == (3, 250, 100)

    assert store.start_batch(tx, 2) == 1
    assert store.record_batch(tx, 2, rows=100, nbytes=10, part_uri="p2", duration_s=0.5)
    assert store.start_batch(tx, 2) == 2
    assert not store.record_batch(tx, 2, rows=100, nbytes=10, part_uri="p2", duration_s=0.4)  # re-run
    store.record_batch(tx, 1, rows=100, nbytes=10, part_uri="p1", duration_s=0.5)
    header = store.get(tx)
    assert (header.batches_done, header.rows_written) == (2, 200)
    assert store.batch(tx, 2).attempts == 2
    batch_events = [e.message for e in store.events(tx, kind="batch")]
    assert batch_events[1] == "batch 2 re-run, counted once: 100 rows in 0.40 s"


def test_empty_plan(store: HeaderStore) -> None:
    tx = _new(store)
    assert store.save_plan(tx, [], batch_size=100, note="planned 0") == []
    assert store.save_plan(tx, [PlannedBatch(1, 0, None, 1)], batch_size=100, note="again") == []
    assert store.get(tx).batches_total == 0


def test_events_are_paged_oldest_first(store: HeaderStore) -> None:
    tx = _new(store)
    for i in range(5):
        store.add_event(tx, "info", f"event {i}")
    first = store.events(tx, limit=3)
    rest = store.events(tx, after_id=first[-1].id, limit=10)
    messages = [e.message for e in first + rest]
    assert messages == ["REQUESTED: requested by ana"] + [f"event {i}" for i in range(5)]
    assert store.last_event(tx, "info").message == "event 4"  # type: ignore[union-attr]


def test_concurrent_transitions_move_the_header_once(store: HeaderStore) -> None:
    """Many workers race to fail/cancel the same transaction: exactly one wins."""
    tx = _new(store)
    store.transition(tx, State.RUNNING, "started")
    wins: list[bool] = []

    def worker(i: int) -> None:
        wins.append(store.fail(tx, f"worker {i}", state=State.FAILED if i % 2 else State.CANCELLED))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    terminal_events = [
        e for e in store.events(tx) if e.kind == "state" and e.data and e.data["state"] in ("FAILED", "CANCELLED")
    ]
    assert len(terminal_events) == 1


def test_concurrent_batch_records_sum_exactly(store: HeaderStore) -> None:
    """Every batch recorded twice, all at once: the derived counters never miss a commit."""
    for _round in range(3):  # a race that shows one time in two is caught almost always
        tx = _new(store)
        store.save_plan(tx, [PlannedBatch(i, i, i + 1, 10) for i in range(1, 31)], batch_size=10, note="30")

        def worker(n: int, tx: str = tx) -> None:
            for _ in range(2):
                store.record_batch(tx, n, rows=n, nbytes=1, part_uri=f"p{n}", duration_s=0.1)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 31)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        header = store.get(tx)
        assert header.batches_done == 30
        assert header.rows_written == sum(range(1, 31))


def test_a_store_from_an_older_version_gains_new_columns(tmp_path: Path) -> None:
    """Tables created before a column existed get it added by ensure_schema (data kept)."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = HeaderStore(url)
    store.ensure_schema()
    tx = _new(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE export_header DROP COLUMN retention_days")
    assert "retention_days" not in {c["name"] for c in sa.inspect(store.engine).get_columns("export_header")}
    store.ensure_schema()
    assert store.get(tx).retention_days is None and store.get(tx).requested_by == "ana"


def test_the_webhook_columns_are_added_to_an_older_store_with_their_defaults(store: HeaderStore) -> None:
    """A store from before webhooks: its headers read as not asked for one, none attempted."""
    import sqlalchemy as sa

    old = _new(store)
    with store.engine.begin() as conn:
        for column in ("webhook_url", "webhook_state", "webhook_delivered_at", "webhook_attempts"):
            conn.exec_driver_sql(f"ALTER TABLE export_header DROP COLUMN {column}")
    store.ensure_schema()
    header = store.get(old)
    assert (header.webhook_url, header.webhook_state, header.webhook_delivered_at, header.webhook_attempts) == (
        None, "not_requested", None, 0)  # fmt: skip
    asked = _new(store, notify_webhook="https://hooks.example.com/x")
    assert (store.get(asked).webhook_url, store.get(asked).webhook_state) == ("https://hooks.example.com/x", "pending")
    from export_tx.store import headers

    for _ in range(2):  # counted in the database: two processes never lose an attempt
        store.update(asked, webhook_attempts=headers.c.webhook_attempts + 1)
    assert store.get(asked).webhook_attempts == 2
    assert "webhook_state" in {c["name"] for c in sa.inspect(store.engine).get_columns("export_header")}
