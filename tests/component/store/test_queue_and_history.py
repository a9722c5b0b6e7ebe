"""The line of exports waiting to start and each definition's throughput history, counted by the
real header store on the embedded SQLite and on PostgreSQL.

Each test gets a store of its own (a fresh database): a place in the line counts everyone's
``REQUESTED`` transactions, so another test's would be counted too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from export_tx import estimates
from export_tx.api import views
from export_tx.estimates import HistoryRates
from export_tx.states import State
from export_tx.store import HeaderStore, NewHeader, PlannedBatch, headers


@pytest.fixture(params=["sqlite", "postgresql"])
def own_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HeaderStore]:
    if request.param == "sqlite":
        s = HeaderStore(f"sqlite:///{tmp_path / 'store.db'}")
        s.ensure_schema()
        yield s
        return
    from tests.deploy import fresh_database

    with fresh_database("export_tx_queue") as dsn:
        s = HeaderStore("postgresql+psycopg://" + dsn.split("://", 1)[1])
        s.ensure_schema()
        try:
            yield s
        finally:
            s.engine.dispose()  # the database is dropped next


T0 = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)


def _request(store: HeaderStore, who: str, *, at: datetime | None = None, definition: str = "demo_orders",
             tx_id: str | None = None) -> str:  # fmt: skip
    tx = tx_id or f"exp_{uuid.uuid4().hex[:12]}"
    store.create(tx, definition=definition, params={"status": "paid"}, batch_size=1000, requested_by=who)
    if at is not None:
        store.update(tx, created_at=at)
    return tx


def _places(store: HeaderStore, ids: list[str]) -> dict[str, tuple[int, int]]:
    return {i: (p.position, p.waiting) for i, p in store.queue_places(ids).items()}


# -- the line ------------------------------------------------------------------------------------


def test_positions_follow_the_order_of_requests_across_users(own_store: HeaderStore) -> None:
    s = own_store
    # Recorded out of order (their creation times say otherwise), by three people.
    c = _request(s, "ana", at=T0 + timedelta(seconds=3))
    a = _request(s, "bob", at=T0 + timedelta(seconds=1))
    d = _request(s, "cy", at=T0 + timedelta(seconds=4))
    b = _request(s, "ana", at=T0 + timedelta(seconds=2))
    assert _places(s, [a, b, c, d]) == {a: (1, 4), b: (2, 4), c: (3, 4), d: (4, 4)}
    place = s.queue_places([c])[c]
    assert (place.position, place.ahead, place.waiting) == (3, 2, 4)


def test_only_those_still_waiting_count_and_later_ones_move_up(own_store: HeaderStore) -> None:
    s = own_store
    a, b, c, d = (_request(s, who, at=T0 + timedelta(seconds=i)) for i, who in enumerate(["ana", "bob", "ana", "cy"]))
    # Exports in every other state, created earlier still, are not in the line.
    for i, end in enumerate([State.RUNNING, State.MERGING, State.SUCCEEDED, State.FAILED, State.CANCELLED]):
        other = _request(s, "old", at=T0 - timedelta(minutes=10 - i))
        s.transition(other, State.RUNNING, "started")
        if end == State.MERGING or end == State.SUCCEEDED:
            s.transition(other, State.MERGING, "merging")
        if end == State.SUCCEEDED:
            s.transition(other, State.SUCCEEDED, "done")
        if end in (State.FAILED, State.CANCELLED):
            s.fail(other, "stopped", state=end)
    assert _places(s, [a, b, c, d]) == {a: (1, 4), b: (2, 4), c: (3, 4), d: (4, 4)}

    s.transition(b, State.RUNNING, "started")  # b got a slot first
    assert _places(s, [a, c, d]) == {a: (1, 3), c: (2, 3), d: (3, 3)}
    s.fail(a, "cancelled by ana", state=State.CANCELLED)
    assert _places(s, [c, d]) == {c: (1, 2), d: (2, 2)}
    s.transition(c, State.RUNNING, "started")
    assert _places(s, [d]) == {d: (1, 1)}
    assert s.queue_places([]) == {} and s.queue_places(["exp_unknown"]) == {}


def test_requests_recorded_in_the_same_instant_are_ordered_by_token(own_store: HeaderStore) -> None:
    s = own_store
    first = _request(s, "ana", at=T0 - timedelta(seconds=1))
    # One burst: one write, one creation time for all of them.
    burst = [f"exp_{uuid.uuid4().hex[:12]}" for _ in range(4)]
    s.create_many([NewHeader(t, definition="demo_orders", params={}, batch_size=None, requested_by=who)
                   for t, who in zip(burst, ["bob", "ana", "cy", "bob"], strict=True)])  # fmt: skip
    assert len({s.get(t).created_at for t in burst}) == 1
    for t in burst:
        s.update(t, created_at=T0)
    places = _places(s, [first, *burst])
    assert places[first] == (1, 5)
    assert [places[t][0] for t in sorted(burst)] == [2, 3, 4, 5]  # distinct, by token


def test_the_place_is_one_statement_of_range_counts_on_the_queue_index(own_store: HeaderStore) -> None:
    s = own_store
    # A busy store: 1,200 exports of 7 people, every other one still waiting; the planner knows it.
    rows = []
    for i in range(1_200):
        row = NewHeader(f"exp_{i:05d}", definition="demo_orders", params={}, batch_size=None,
                        requested_by=f"user{i % 7}").row(T0 + timedelta(seconds=i))  # fmt: skip
        row["state"] = State.REQUESTED.value if i % 2 == 0 else State.SUCCEEDED.value
        rows.append(row)
    with s.engine.begin() as conn:
        conn.execute(headers.insert(), rows)
        conn.exec_driver_sql("ANALYZE")
    ids = ["exp_00000", "exp_00600", "exp_01198"]
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    sa.event.listen(s.engine, "before_cursor_execute", record)
    try:
        assert _places(s, ids) == {ids[0]: (1, 600), ids[1]: (301, 600), ids[2]: (600, 600)}
    finally:
        sa.event.remove(s.engine, "before_cursor_execute", record)
    sent = [(text, values) for text, values in sent if text.lstrip().upper().startswith("SELECT")]  # not BEGIN
    assert len(sent) == 1  # the page's places in one statement
    statement, parameters = sent[0]
    with s.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        plan = conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters).all()
    shown = "\n".join(str(row) for row in plan)
    # Those ahead: a range of the index (the state, then creation times up to this one's).
    if sqlite:
        assert "ix_export_header_queue (state=? AND created_at<" in shown, shown
    else:
        assert "on ix_export_header_queue" in shown and "(created_at <= export_header.created_at)" in shown, shown


def test_an_older_store_gains_the_columns_and_indexes_in_place(own_store: HeaderStore) -> None:
    s = own_store
    tx = _request(s, "ana")
    with s.engine.begin() as conn:
        for index in ("ix_export_header_queue", "ix_export_header_history"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for column in ("batches_started_at", "last_batch_at"):
            conn.exec_driver_sql(f"ALTER TABLE export_header DROP COLUMN {column}")
    inspector = sa.inspect(s.engine)
    assert "ix_export_header_queue" not in {ix["name"] for ix in inspector.get_indexes("export_header")}
    s.ensure_schema()
    s.ensure_schema()  # idempotent
    inspector = sa.inspect(s.engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("export_header")}
    assert indexes["ix_export_header_queue"] == ["state", "created_at", "id"]
    assert indexes["ix_export_header_history"] == ["definition", "finished_at"]
    header = s.get(tx)
    assert (header.batches_started_at, header.last_batch_at, header.requested_by) == (None, None, "ana")
    assert s.queue_places([tx])[tx].position == 1


# -- the batch phase and the history -------------------------------------------------------------


def test_the_batch_phase_is_recorded_by_the_batches(own_store: HeaderStore) -> None:
    s = own_store
    tx = _request(s, "ana")
    s.transition(tx, State.RUNNING, "started")
    s.save_plan(tx, [PlannedBatch(1, 0, 10, 10), PlannedBatch(2, 10, None, 10)], batch_size=10, note="2")
    assert s.get(tx).batches_started_at is None
    s.start_batch(tx, 2)
    started = s.get(tx).batches_started_at
    assert started is not None and s.get(tx).last_batch_at is None
    s.start_batch(tx, 1)
    s.start_batch(tx, 2)  # a retry
    assert s.get(tx).batches_started_at == started  # the first batch's first attempt only
    s.record_batch(tx, 2, rows=10, nbytes=1, part_uri="p2", duration_s=0.1)
    first_end = s.get(tx).last_batch_at
    assert first_end is not None and first_end >= started
    s.record_batch(tx, 1, rows=10, nbytes=1, part_uri="p1", duration_s=0.1)
    header = s.get(tx)
    assert header.last_batch_at is not None and header.last_batch_at >= first_end
    assert (header.batches_done, header.rows_written) == (2, 20)


def _succeeded(store: HeaderStore, definition: str, rows: int, seconds: float, finished: datetime,
               *, timed: bool = True) -> str:  # fmt: skip
    tx = _request(store, "ana", definition=definition)
    store.transition(tx, State.RUNNING, "started")
    store.transition(tx, State.MERGING, "merging")
    store.transition(tx, State.SUCCEEDED, "done", result_rows=rows)
    values: dict[str, Any] = {"finished_at": finished}
    if timed:
        start = finished - timedelta(seconds=seconds + 2)
        values |= {"batches_started_at": start, "last_batch_at": start + timedelta(seconds=seconds)}
    store.update(tx, **values)
    return tx


def test_the_history_is_the_definitions_latest_succeeded_batch_phases(own_store: HeaderStore) -> None:
    s = own_store
    assert s.throughput_samples("demo_orders") == []
    _succeeded(s, "demo_orders", 10_000, 10.0, T0)
    _succeeded(s, "demo_orders", 50_000, 25.0, T0 + timedelta(minutes=2))
    expired = _succeeded(s, "demo_orders", 3_000, 1.5, T0 + timedelta(minutes=1))
    s.transition(expired, State.EXPIRED, "retention ended")  # it did succeed: it counts
    _succeeded(s, "demo_orders", 0, 1.0, T0 + timedelta(minutes=3))  # no rows: says nothing
    _succeeded(s, "demo_orders", 9_999, 1.0, T0 + timedelta(minutes=4), timed=False)  # an older version's
    _succeeded(s, "orders", 1_000_000, 10.0, T0 + timedelta(minutes=5))  # another definition
    failed = _request(s, "ana")
    s.transition(failed, State.RUNNING, "started")
    s.update(failed, batches_started_at=T0, last_batch_at=T0 + timedelta(seconds=1), result_rows=5)
    s.fail(failed, "boom")
    running = _request(s, "ana")
    s.transition(running, State.RUNNING, "started")
    s.update(running, batches_started_at=T0, last_batch_at=T0 + timedelta(seconds=1))

    assert s.throughput_samples("demo_orders") == [(50_000, 25.0), (3_000, 1.5), (10_000, 10.0)]  # newest first
    assert s.throughput_samples("demo_orders", limit=2) == [(50_000, 25.0), (3_000, 1.5)]
    assert s.throughput_samples("orders") == [(1_000_000, 10.0)]
    # Rates 2,000, 2,000 and 1,000 rows/s, weighted by 50,000, 3,000 and 10,000 rows.
    assert HistoryRates().rate(s, "demo_orders") == 2_000.0
    assert HistoryRates().rate(s, "nothing_yet") is None


def test_the_history_figure_is_kept_a_while_by_the_process(own_store: HeaderStore) -> None:
    s = own_store
    clock = [1_000.0]
    history = HistoryRates(ttl=60, clock=lambda: clock[0])
    _succeeded(s, "demo_orders", 10_000, 10.0, T0)
    assert history.rate(s, "demo_orders") == 1_000.0
    _succeeded(s, "demo_orders", 90_000, 10.0, T0 + timedelta(minutes=1))
    clock[0] += 59
    assert history.rate(s, "demo_orders") == 1_000.0  # the figure of a minute ago
    clock[0] += 2
    assert history.rate(s, "demo_orders") == 9_000.0


# -- the status records ------------------------------------------------------------------------


def test_status_records_say_where_each_export_stands(own_store: HeaderStore, monkeypatch: pytest.MonkeyPatch) -> None:
    s = own_store
    monkeypatch.setattr(estimates, "history", HistoryRates())  # this store's figures, not another test's
    now = datetime.now(UTC)
    mine = _request(s, "ana", at=now - timedelta(seconds=30))
    theirs = _request(s, "bob", at=now - timedelta(seconds=20))
    also_mine = _request(s, "ana", at=now - timedelta(seconds=10))
    running = _request(s, "ana", at=now - timedelta(minutes=5))
    s.transition(running, State.RUNNING, "started")
    s.save_plan(running, [PlannedBatch(i, i * 10, i * 10 + 10, 1_000) for i in range(10)], batch_size=1_000,
                note="10")  # fmt: skip
    planned = _request(s, "ana", at=now - timedelta(minutes=4))
    s.transition(planned, State.RUNNING, "started")
    s.save_plan(planned, [PlannedBatch(1, 0, None, 6_000)], batch_size=6_000, note="1")
    planning = _request(s, "ana", at=now - timedelta(minutes=3))
    s.transition(planning, State.RUNNING, "started")
    # Two batches of the running one took 10 s from the first start to the latest end.
    start = now - timedelta(seconds=12)
    s.update(running, batches_started_at=start, last_batch_at=start + timedelta(seconds=10),
             batches_done=2, rows_written=2_000)  # fmt: skip

    found = {h.id: h for h in s.list_headers(requested_by="ana")[0]}
    records = {r.id: r for r in views.statuses(s, list(found.values()))}
    assert records[mine].queue is not None and records[also_mine].queue is not None
    assert records[mine].queue.model_dump() == {"position": 1, "ahead": 0, "waiting": 3}
    # Bob's export is ahead of ana's second one: counted, never shown.
    assert records[also_mine].queue.model_dump() == {"position": 3, "ahead": 2, "waiting": 3}
    assert theirs not in records and records[mine].eta is None

    eta = records[running].eta
    assert eta is not None and records[running].queue is None
    assert (eta.basis, eta.rows_per_second, eta.rows_left) == ("this_run", 200.0, 8_000)
    assert eta.estimated_finish_at == start + timedelta(seconds=50)
    assert eta.seconds_left == pytest.approx(38.0, abs=1.0)
    # Planned, no batch done, no succeeded export of the definition yet: no estimate; planning: none either.
    assert records[planned].eta is None and records[planning].eta is None

    _succeeded(s, "demo_orders", 30_000, 10.0, now - timedelta(hours=1))
    monkeypatch.setattr(estimates, "history", HistoryRates())
    again = views.status(s, s.get(planned))
    assert again.eta is not None
    assert (again.eta.basis, again.eta.rows_per_second, again.eta.rows_left) == ("history", 3_000.0, 6_000)
    assert again.eta.seconds_left == pytest.approx(2.0, abs=1.0)  # batches not started: 6,000 rows from now

    single = views.status(s, s.get(mine))
    assert single.queue is not None and single.queue.position == 1 and single.eta is None
