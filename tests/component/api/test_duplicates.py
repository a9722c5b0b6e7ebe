"""The same request twice is recognised: a requester's request whose definition, params and format
equal one of their transactions still active or downloadable answers that transaction (200, with
``duplicate``) instead of starting another, unless it says ``"force": true``. Racing requests make
one export. On the embedded SQLite store and on PostgreSQL; Airflow's run creation is replaced by a
recorder (the real one is tested end to end)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from export_tx.api import airflow_side
from export_tx.api import app as api
from export_tx.request import fingerprint
from export_tx.states import State
from export_tx.store import HeaderStore, utcnow
from tests.helpers import FakeUser, signed_in

BODY = {"definition": "demo_orders", "params": {"status": "paid"}}


@pytest.fixture
def client(store: HeaderStore, monkeypatch: pytest.MonkeyPatch, demo_db: Any) -> Iterator[Any]:
    # A requester of this test's own: the PostgreSQL store is shared by the session's tests.
    who = {"user": FakeUser(f"ana-{uuid.uuid4().hex[:8]}", "USER")}
    triggered: list[str] = []
    monkeypatch.setattr(airflow_side, "trigger_run", lambda tx_id, conf, user: triggered.append(tx_id))
    monkeypatch.setattr(airflow_side, "starter", airflow_side.RunStarter())
    with signed_in(store, who) as app, TestClient(app, base_url="http://airflow.test") as c:
        c.store, c.who, c.triggered = store, who, triggered  # type: ignore[attr-defined]
        yield c


def _post(client: Any, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/v1/transactions", content=json.dumps(body),
                       headers={"Content-Type": "application/json", **headers})  # fmt: skip


def _count(client: Any) -> int:
    return int(client.store.list_headers(requested_by=client.who["user"].name, limit=100)[1])


def test_the_same_request_answers_the_running_one(client: Any) -> None:
    first = _post(client, BODY)
    assert first.status_code == 202 and first.json()["duplicate"] is None
    # The same export: how it is delivered does not matter.
    same = {**BODY, "notify_email": "ana@example.com", "label": "again", "batch_size": 5000, "retention_days": 2}
    second = _post(client, same)
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["id"] == first.json()["id"] and body["duplicate"]["of"] == first.json()["id"]
    assert body["duplicate"]["state"] == "REQUESTED" and body["duplicate"]["matched"] == ["definition", "params",
                                                                                          "format"]  # fmt: skip
    assert second.headers["Location"] == body["links"]["self"]
    assert _count(client) == 1 and len(client.triggered) == 1  # nothing new started
    # Another format, other params: other exports.
    assert _post(client, {**BODY, "format": "csv"}).status_code == 202
    assert _post(client, {**BODY, "params": {"status": "shipped"}}).status_code == 202
    assert _count(client) == 3


def test_force_starts_another_and_other_users_never_match(client: Any) -> None:
    first = _post(client, BODY).json()["id"]
    forced = _post(client, {**BODY, "force": True})
    assert forced.status_code == 202 and forced.json()["id"] != first
    # The newest live one is answered.
    assert _post(client, BODY).json()["duplicate"]["of"] == forced.json()["id"]
    bob = f"bob-{uuid.uuid4().hex[:8]}"
    client.who["user"] = FakeUser(bob, "USER")
    theirs = _post(client, BODY)
    assert theirs.status_code == 202 and theirs.json()["requested_by"] == bob
    refused = _post(client, {**BODY, "force": "yes"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "force"


def test_an_ended_export_is_requested_anew_a_downloadable_one_is_answered(client: Any) -> None:
    store: HeaderStore = client.store
    first = _post(client, BODY).json()["id"]
    store.fail(first, "the source was down")
    second = _post(client, BODY)
    assert second.status_code == 202 and second.json()["id"] != first  # FAILED: not live
    tx = second.json()["id"]
    store.transition(tx, State.RUNNING, "run")
    store.transition(tx, State.MERGING, "merge")
    store.transition(tx, State.SUCCEEDED, "done", result_uri="file:///nowhere.parquet",
                     expires_at=utcnow() + timedelta(days=1))  # fmt: skip
    assert _post(client, BODY).json()["duplicate"] == {"of": tx, "state": "SUCCEEDED", "matched": [
        "definition", "params", "format"], "hint": 'send "force": true to start a new export anyway'}  # fmt: skip
    # Its retention over (housekeeping has not expired it yet): not downloadable, so a new export.
    store.update(tx, expires_at=utcnow() - timedelta(minutes=1))
    third = _post(client, BODY)
    assert third.status_code == 202 and third.json()["id"] not in (first, tx)
    assert store.get(tx).dedup_key is None and store.get(third.json()["id"]).dedup_key is not None


def test_an_idempotency_key_still_replays(client: Any) -> None:
    first = _post(client, BODY, **{"Idempotency-Key": "k-1"})
    replay = _post(client, BODY, **{"Idempotency-Key": "k-1"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"] and replay.json()["duplicate"] is None


def test_identical_requests_racing_make_one_export(store: HeaderStore, monkeypatch: pytest.MonkeyPatch,
                                                    demo_db: Any) -> None:  # fmt: skip
    """Twelve identical requests at once, through the batched header writer: one 202, eleven
    answers naming it; the unique dedup key holds even when the lookups all missed."""
    monkeypatch.setattr(airflow_side, "trigger_run", lambda *_: None)
    monkeypatch.setattr(airflow_side, "starter", airflow_side.RunStarter())
    # Every lookup before the insert misses, as when all requests arrive before any is written.
    real_find = store.find_live_duplicate
    calls = {"n": 0}

    def late_find(*args: Any) -> Any:
        calls["n"] += 1
        return None if calls["n"] <= 12 else real_find(*args)

    monkeypatch.setattr(store, "find_live_duplicate", late_find)
    barrier = threading.Barrier(12)
    answers: list[Any] = []
    ana = f"ana-{uuid.uuid4().hex[:8]}"

    def request() -> None:
        barrier.wait()
        body = api.TransactionRequest(**BODY)
        answers.append(api._request_export(body, FakeUser(ana, "USER"), store, None))

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 11 + [202]
    bodies = [json.loads(a.body) for a in answers]
    (made,) = [b["id"] for b in bodies if b["duplicate"] is None]
    assert all(b["duplicate"]["of"] == made for b in bodies if b["duplicate"] is not None)
    headers, total = store.list_headers(requested_by=ana, limit=100)
    assert total == 1 and headers[0].fingerprint == fingerprint("demo_orders", {"status": "paid"}, "parquet")
