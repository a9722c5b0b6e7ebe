"""Place in the line and estimated finish through the /exports app's routes, on a real header
store (SQLite): the status, the list (the page's places in one query), each person seeing only
counts of anyone else's, and the OpenAPI document describing both fields.

Airflow's authentication is replaced by a fixed user (the real one is tested on the real
api-server in tests/e2e/test_queue.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from export_tx import estimates
from export_tx.estimates import HistoryRates
from export_tx.states import State
from export_tx.store import HeaderStore, PlannedBatch
from tests.helpers import FakeUser, signed_in


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    store = HeaderStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_schema()
    monkeypatch.setattr(estimates, "history", HistoryRates())  # this store's figures only
    who = {"user": FakeUser("ana", "USER")}
    with signed_in(store, who) as app, TestClient(app, base_url="http://airflow.test") as c:
        c.store, c.who = store, who  # type: ignore[attr-defined]
        yield c


def _request(store: HeaderStore, tx: str, who: str, at: datetime) -> str:
    store.create(tx, definition="demo_orders", params={"status": "paid"}, batch_size=1000, requested_by=who)
    store.update(tx, created_at=at)
    return tx


def _status(client: Any, tx: str) -> dict[str, Any]:
    answer = client.get(f"/v1/transactions/{quote(tx, safe='')}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_status_and_list_show_the_place_in_the_line(client: Any) -> None:
    store: HeaderStore = client.store
    now = datetime.now(UTC)
    a = _request(store, "exp_a", "ana", now - timedelta(seconds=40))
    b = _request(store, "exp_b", "bob", now - timedelta(seconds=30))
    c = _request(store, "exp_c", "ana", now - timedelta(seconds=20))
    done = _request(store, "exp_done", "ana", now - timedelta(minutes=9))
    store.transition(done, State.RUNNING, "started")

    assert _status(client, a)["queue"] == {"position": 1, "ahead": 0, "waiting": 3}
    assert _status(client, c)["queue"] == {"position": 3, "ahead": 2, "waiting": 3}
    assert _status(client, done)["queue"] is None
    listed = client.get("/v1/transactions").json()["transactions"]
    assert {t["id"]: t["queue"] for t in listed} == {
        c: {"position": 3, "ahead": 2, "waiting": 3},
        a: {"position": 1, "ahead": 0, "waiting": 3},
        done: None,
    }
    # Bob sees his own place, and only counts of ana's: her exports stay hers (404).
    client.who["user"] = FakeUser("bob", "USER")
    assert _status(client, b)["queue"] == {"position": 2, "ahead": 1, "waiting": 3}
    assert client.get(f"/v1/transactions/{a}").status_code == 404
    assert [t["id"] for t in client.get("/v1/transactions").json()["transactions"]] == [b]

    # a gets a slot: everyone behind it moves up, in the list too.
    store.transition(a, State.RUNNING, "started")
    assert _status(client, b)["queue"] == {"position": 1, "ahead": 0, "waiting": 2}
    client.who["user"] = FakeUser("root", "ADMIN")
    places = {t["id"]: t["queue"] for t in client.get("/v1/transactions", params={"state": "REQUESTED"}).json()
              ["transactions"]}  # fmt: skip
    assert places == {c: {"position": 2, "ahead": 1, "waiting": 2}, b: {"position": 1, "ahead": 0, "waiting": 2}}


def test_the_list_counts_the_places_of_a_page_in_one_statement(client: Any) -> None:
    store: HeaderStore = client.store
    now = datetime.now(UTC)
    for i in range(30):
        _request(store, f"exp_{i:02d}", "ana", now - timedelta(seconds=60 - i))
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        page = client.get("/v1/transactions", params={"limit": 25}).json()["transactions"]
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert [t["queue"]["position"] for t in page] == list(range(30, 5, -1))  # newest first
    assert {t["queue"]["waiting"] for t in page} == {30}
    # The page, its total, and one statement for all 25 places.
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 3, statements


def test_a_running_export_shows_its_estimated_finish(client: Any) -> None:
    store: HeaderStore = client.store
    now = datetime.now(UTC)
    tx = _request(store, "exp_running", "ana", now - timedelta(minutes=2))
    store.transition(tx, State.RUNNING, "started")
    store.save_plan(tx, [PlannedBatch(i, i, i + 1, 1_000) for i in range(10)], batch_size=1_000, note="10")
    assert _status(client, tx)["eta"] is None  # no batch done, no history yet
    start = now - timedelta(seconds=12)
    store.update(tx, batches_started_at=start, last_batch_at=start + timedelta(seconds=10), batches_done=2,
                 rows_written=2_000)  # fmt: skip
    status = _status(client, tx)
    eta = status["eta"]
    assert status["queue"] is None
    assert (eta["basis"], eta["rows_per_second"], eta["rows_left"]) == ("this_run", 200.0, 8_000)
    finish = datetime.fromisoformat(eta["estimated_finish_at"])
    assert finish == start + timedelta(seconds=50)
    assert eta["seconds_left"] == pytest.approx((finish - datetime.now(UTC)).total_seconds(), abs=1.0)
    store.transition(tx, State.MERGING, "merging")
    assert _status(client, tx)["eta"] is None


def test_the_openapi_document_describes_both_fields(client: Any) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    transaction = schemas["Transaction"]["properties"]
    assert "line of exports waiting to start" in transaction["queue"]["description"]
    assert "batches should be done" in transaction["eta"]["description"]
    assert set(schemas["Queue"]["properties"]) == {"position", "ahead", "waiting"}
    assert all(p.get("description") for p in schemas["Queue"]["properties"].values())
    eta = schemas["Eta"]["properties"]
    assert set(eta) == {"estimated_finish_at", "seconds_left", "basis", "rows_per_second", "rows_left"}
    assert all(p.get("description") for p in eta.values())
    assert eta["basis"]["enum"] == ["this_run", "history"]
