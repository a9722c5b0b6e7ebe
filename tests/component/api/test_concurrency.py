"""What keeps /exports fast under a burst, without changing what it answers: headers of concurrent
requests written in one transaction, Airflow runs created after the burst is answered (and a run
that cannot be created still ends its transaction FAILED), and the token revocation lookup off
the event loop. The real api-server under load is measured by ``bench/``; the answers are tested
end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from export_tx.api import airflow_side, batching
from export_tx.states import State
from export_tx.store import HeaderStore, NewHeader
from tests.helpers import FakeUser, signed_in


def _new(tx_id: str, who: str = "ana", key: str | None = None) -> NewHeader:
    return NewHeader(tx_id, definition="demo_orders", params={"status": "paid"}, batch_size=1000, requested_by=who,
                     idempotency_key=key, request_hash="h")  # fmt: skip


def _ids(n: int) -> list[str]:
    """Fresh tokens (the PostgreSQL database is shared by the session's tests)."""
    run = uuid.uuid4().hex[:8]
    return [f"t-{run}-{i}" for i in range(n)]


def test_create_many_creates_in_order_and_returns_what_existed(store: HeaderStore) -> None:
    old, one, two = _ids(3)
    key = uuid.uuid4().hex
    store.create(old, definition="demo_orders", params={}, batch_size=5000, requested_by="bob")
    results = store.create_many([_new(one), _new(old), _new(two, key=key)])
    assert [(h.id, created) for h, created in results] == [(one, True), (old, False), (two, True)]
    assert results[1][0].requested_by == "bob"  # the one that existed, unchanged
    header = store.get(two)
    assert header.state == State.REQUESTED and header.idempotency_key == key and header.params == {"status": "paid"}
    assert [e.message for e in store.events(one)] == ["REQUESTED: requested by ana"]
    assert store.create_many([]) == []


def test_create_many_with_a_key_taken_creates_none(store: HeaderStore) -> None:
    import sqlalchemy as sa

    first, second, third = _ids(3)
    key = uuid.uuid4().hex
    store.create_many([_new(first, key=key)])
    with pytest.raises(sa.exc.IntegrityError):
        store.create_many([_new(second), _new(third, key=key)])
    assert store.find(second) is None and store.find(third) is None


def _writes(store: HeaderStore) -> list[int]:
    """Count the transactions of store.create_many (each slow: the others queue meanwhile)."""
    calls: list[int] = []
    create_many = store.create_many

    def counted(new: Any) -> Any:
        calls.append(len(new))
        time.sleep(0.05)
        return create_many(new)

    store.create_many = counted  # type: ignore[method-assign]
    return calls


def _concurrently(writer: batching.HeaderWriter, store: HeaderStore, new: list[NewHeader]) -> dict[str, Any]:
    import sqlalchemy as sa

    results: dict[str, Any] = {}

    def request(n: NewHeader) -> None:
        try:
            results[n.tx_id] = writer.create(store, n)
        except sa.exc.IntegrityError as exc:
            results[n.tx_id] = exc

    threads = [threading.Thread(target=request, args=(n,)) for n in new]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_headers_are_written_together_each_answered_its_own(store: HeaderStore) -> None:
    ids = _ids(20)
    calls = _writes(store)
    results = _concurrently(batching.HeaderWriter(), store, [_new(i) for i in ids])
    assert sum(calls) == 20 and len(calls) < 10  # one alone, then the others queued meanwhile
    for tx_id in ids:
        header, created = results[tx_id]
        assert created and header.id == tx_id == store.get(tx_id).id


def test_a_key_raced_in_a_batch_fails_that_request_only(store: HeaderStore) -> None:
    ids = _ids(10)
    key = uuid.uuid4().hex
    store.create(ids[0], definition="demo_orders", params={}, batch_size=1000, requested_by="ana",
                 idempotency_key=key)  # fmt: skip
    calls = _writes(store)
    results = _concurrently(
        batching.HeaderWriter(), store, [_new(i, key=key if i == ids[5] else None) for i in ids[1:]]
    )
    assert isinstance(results[ids[5]], Exception)
    assert all(results[i][1] for i in ids[1:] if i != ids[5]) and store.find(ids[5]) is None
    assert len(calls) >= 2


def test_a_request_alone_waits_for_its_run_and_a_burst_does_not() -> None:
    starter = airflow_side.RunStarter()
    release = threading.Event()
    started: list[str] = []

    def job(name: str) -> None:
        release.wait(5)
        started.append(name)

    starter.enter()
    alone = starter.submit(lambda: job("alone"))
    release.set()
    assert starter.wait(alone, 5) and alone.exception() is None and started == ["alone"]
    release.clear()
    starter.enter()  # a second request in progress: a burst
    began = time.monotonic()
    burst = starter.submit(lambda: job("burst"))
    assert not starter.wait(burst, 5) and time.monotonic() - began < 1
    starter.leave()
    starter.leave()
    release.set()
    burst.result(timeout=5)
    assert started == ["alone", "burst"]


def test_runs_of_a_burst_are_created_once_its_requests_are_answered() -> None:
    starter = airflow_side.RunStarter()
    starter.DEFER_MAX_SECONDS = 5.0
    created_at: list[float] = []
    starter.enter()
    starter.enter()
    future = starter.submit(lambda: created_at.append(time.monotonic()))
    time.sleep(0.2)
    assert not created_at  # deferred while requests are being answered
    answered = time.monotonic()
    starter.leave()
    starter.leave()
    future.result(timeout=5)
    assert created_at[0] >= answered
    # Never deferred for longer than DEFER_MAX_SECONDS, however busy.
    starter.DEFER_MAX_SECONDS = 0.1
    starter.enter()
    starter.enter()
    try:
        starter.submit(lambda: created_at.append(time.monotonic())).result(timeout=5)
    finally:
        starter.leave()
        starter.leave()


def test_runs_are_created_in_a_process_of_their_own_which_comes_back_when_it_dies() -> None:
    """The api-server's interpreter lock is not held while Airflow creates a run: RunMaker calls
    run in one child process, the same one each time, and a new one after it died."""
    maker = airflow_side.RunMaker()
    try:
        child = maker.call(os.getpid)
        assert child != os.getpid() and maker.call(os.getpid) == child
        os.kill(child, signal.SIGKILL)
        again = maker.call(os.getpid)
        assert again not in (child, os.getpid()) and maker.call(os.getpid) == again
    finally:
        maker.stop()


def test_a_run_that_cannot_be_created_says_what_went_wrong_across_the_process_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    def locked(*_: Any) -> None:
        raise OperationalError("INSERT INTO dag_run …", {}, Exception("database is locked"))

    monkeypatch.setattr(airflow_side, "_create_run", locked)
    with pytest.raises(airflow_side.RunNotCreated) as caught:
        airflow_side.create_run("tx", {}, "ana")
    crossed = pickle.loads(pickle.dumps(caught.value))  # how it leaves the run maker's process
    assert airflow_side.error_kind(crossed) == "OperationalError" and "database is locked" in str(crossed)
    assert airflow_side.error_kind(ConnectionError("down")) == "ConnectionError"


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_db: Path) -> Iterator[Any]:
    store = HeaderStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_schema()
    monkeypatch.setattr(airflow_side, "starter", airflow_side.RunStarter())
    with (
        signed_in(store, {"user": FakeUser("ana", "USER")}) as app,
        TestClient(app, base_url="http://airflow.test") as c,
    ):
        c.store = store  # type: ignore[attr-defined]
        yield c


def test_a_run_that_cannot_be_created_after_a_burst_fails_its_transaction(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> None:
        raise ConnectionError("metadata database unreachable")

    monkeypatch.setattr(airflow_side, "trigger_run", down)
    airflow_side.starter.enter()  # another request in progress: this one answers without waiting
    try:
        body = json.dumps({"definition": "demo_orders"})
        answer = client.post("/v1/transactions", content=body,
                             headers={"Content-Type": "application/json", "Idempotency-Key": "k1"})  # fmt: skip
    finally:
        airflow_side.starter.leave()
    assert answer.status_code == 202 and answer.json()["state"] == "REQUESTED"
    tx_id = answer.json()["id"]
    deadline = time.monotonic() + 10
    while client.store.get(tx_id).state == State.REQUESTED and time.monotonic() < deadline:
        time.sleep(0.05)
    header = client.store.get(tx_id)
    assert header.state == State.FAILED
    assert header.error == "the Airflow run could not be started (ConnectionError); try again later"
    assert header.idempotency_key is None  # free again: a retry with it starts the export


class _TextClaims:
    """A token validator for tests: a token's claims are its text, ``"<name>:<role>:<jti>"``;
    any other text fails as a bad signature would."""

    async def avalidated_claims(self, token: str) -> dict[str, Any]:
        from jwt import InvalidTokenError

        parts = token.split(":")
        if len(parts) != 3:
            raise InvalidTokenError("signature")
        name, role, jti = parts
        return {"sub": name, "role": role, "jti": jti}


def test_the_revocation_lookup_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from jwt import InvalidTokenError

    from export_tx.api import auth
    from export_tx.api.auth import ExportsAuthManager

    looked_up: list[tuple[str, int]] = []

    def is_revoked(jti: str) -> bool:
        looked_up.append((jti, threading.get_ident()))
        return jti == "revoked"

    monkeypatch.setattr(ExportsAuthManager, "_get_token_validator", classmethod(lambda cls: _TextClaims()))
    monkeypatch.setattr(auth, "token_revoked", is_revoked)
    manager = ExportsAuthManager()

    async def check(token: str) -> Any:
        return await manager.get_user_from_token(token)

    user = asyncio.run(check("ana:USER:fine"))
    assert (user.get_name(), user.role) == ("ana", "USER")
    with pytest.raises(InvalidTokenError, match="revoked"):
        asyncio.run(check("ana:USER:revoked"))
    with pytest.raises(InvalidTokenError):
        asyncio.run(check("bad"))
    assert [j for j, _ in looked_up] == ["fine", "revoked"]
    assert all(thread != threading.get_ident() for _, thread in looked_up)


def test_the_revocation_lookup_answers_as_airflow_does(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against Airflow's own metadata database: a token revoked with Airflow's ``RevokedToken.revoke``
    (a logout) is revoked for :func:`token_revoked` on both of its paths (its one statement, and
    Airflow's own check once a minute), and a token never revoked is not."""
    from datetime import timedelta

    from airflow.models.revoked_token import RevokedToken

    from export_tx.api import auth
    from export_tx.store import utcnow

    revoked, fine = f"jti-{uuid.uuid4().hex}", f"jti-{uuid.uuid4().hex}"
    RevokedToken.revoke(revoked, utcnow() + timedelta(hours=1))
    airflow_calls: list[str] = []
    airflows_own = RevokedToken.is_revoked

    def counted(jti: str) -> bool:
        airflow_calls.append(jti)
        return bool(airflows_own(jti))

    monkeypatch.setattr(RevokedToken, "is_revoked", counted)
    monkeypatch.setitem(auth._revocation, "airflow_checked_at", float("-inf"))
    assert auth.token_revoked(revoked) is True  # Airflow's turn: the first check of the minute
    assert auth.token_revoked(revoked) is True and auth.token_revoked(fine) is False  # the one statement
    assert airflow_calls == [revoked]
    monkeypatch.setitem(auth._revocation, "airflow_checked_at", float("-inf"))
    assert auth.token_revoked(fine) is False
    assert airflow_calls == [revoked, fine]


class _RecordingStore(HeaderStore):
    """The header store, noting each transaction read."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[str] = []

    def find(self, tx_id: str) -> Any:
        self.reads.append(tx_id)
        return super().find(tx_id)


@pytest.fixture
def real_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_db: Path) -> Iterator[Any]:
    """The ``/exports`` app behind Airflow's own authentication (``get_user``) and our auth manager,
    with :class:`_TextClaims` tokens and a revocation list of jtis ending in "revoked"; every
    lookup noted."""
    from airflow.api_fastapi.core_api import security

    from export_tx.api import app as api
    from export_tx.api import auth
    from export_tx.api.auth import ExportsAuthManager

    looked_up: list[str] = []

    def is_revoked(jti: str) -> bool:
        looked_up.append(jti)
        return jti.endswith("revoked")

    monkeypatch.setattr(ExportsAuthManager, "_get_token_validator", classmethod(lambda cls: _TextClaims()))
    monkeypatch.setattr(auth, "token_revoked", is_revoked)
    manager = ExportsAuthManager()
    monkeypatch.setattr(security, "get_auth_manager", lambda: manager)
    store = _RecordingStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_schema()
    store.create("t-ana", definition="demo_orders", params={}, batch_size=1000, requested_by="ana",
                 idempotency_key=None, request_hash="h")  # fmt: skip

    async def known_store() -> HeaderStore:  # as get_store, once the store is known: on the event loop
        return store

    api.app.dependency_overrides[api.get_store] = known_store
    try:
        with TestClient(api.app, base_url="http://airflow.test") as client:
            client.store, client.looked_up = store, looked_up  # type: ignore[attr-defined]
            yield client
    finally:
        api.app.dependency_overrides.clear()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        ("GET", "/v1/transactions/t-ana", "ana:USER:j-revoked"),
        ("POST", "/v1/transactions/t-ana/cancel", "ana:USER:j-revoked"),
        ("GET", "/v1/transactions?limit=0", "ana:USER:j-revoked"),  # a parameter it would refuse
        ("POST", "/v1/transactions", "vic:VIEWER:j-revoked"),  # a request it would deny
        ("GET", "/v1/definitions/demo_orders/preview?rows=1", "ana:USER:j-revoked"),
    ],
)
def test_a_revoked_token_gets_airflows_answer_from_every_route_and_touches_nothing(
    real_tokens: Any, method: str, path: str, token: str
) -> None:
    """A logged-out token, through Airflow's own ``get_user`` and our auth manager: 403, no read."""
    answer = real_tokens.request(method, path, headers=_bearer(token), json={"definition": "demo_orders"}
                                 if method == "POST" else None)  # fmt: skip
    assert (answer.status_code, answer.json()["detail"]) == (403, "Invalid JWT token")
    assert real_tokens.looked_up == ["j-revoked"]
    assert real_tokens.store.reads == []
    assert real_tokens.store.get("t-ana").state == State.REQUESTED


def test_a_valid_token_still_gets_the_refusal_its_request_earns(real_tokens: Any) -> None:
    """One revocation lookup per request, whatever the answer."""
    assert real_tokens.get("/v1/transactions?limit=0", headers=_bearer("ana:USER:j2")).status_code == 422
    denied = real_tokens.post("/v1/transactions", headers=_bearer("vic:VIEWER:j3"), json={"definition": "demo_orders"})
    assert (denied.status_code, denied.json()["detail"]) == (403, "vic may not request exports")
    assert real_tokens.get("/v1/transactions/t-other", headers=_bearer("ana:USER:j4")).status_code == 404
    assert real_tokens.looked_up == ["j2", "j3", "j4"]


def test_requests_take_the_long_lived_heap_out_of_the_garbage_collectors_reach(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection over the api-server's ~1M long-lived objects stopped every request for up
    to 0.55 s: the first request freezes what is alive, and so does the first request after each
    of the next full collections, HEAP_FREEZES times in all; then collections go on as before."""
    import gc

    from export_tx.api import app as api

    monkeypatch.setattr(api, "_heap", {"freezes": 0, "full_collections": -1})
    gc.unfreeze()
    gc.disable()  # only the collections this test makes
    try:
        assert gc.get_freeze_count() == 0
        assert client.get("/v1/me").status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 1000 and api._heap["freezes"] == 1
        assert client.get("/v1/me").status_code == 200
        assert gc.get_freeze_count() == frozen  # no full collection since: nothing more to freeze
        kept = [[i] for i in range(5000)]  # long-lived objects made after the first freeze
        for n in range(2, api.HEAP_FREEZES + 1):
            gc.collect()
            assert client.get("/v1/me").status_code == 200
            assert api._heap["freezes"] == n
        assert gc.get_freeze_count() >= frozen + len(kept)
        gc.collect()
        settled = gc.get_freeze_count()
        assert client.get("/v1/me").status_code == 200
        assert gc.get_freeze_count() == settled and api._heap["freezes"] == api.HEAP_FREEZES
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_first_request_starts_the_run_maker_and_shortens_the_switch_interval(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set once per api-server process, at its first /exports request (a mounted app has no startup
    hook): the interpreter hands its lock over every EXPORT_TX_API_SWITCH_INTERVAL_MS (1 ms by
    default, Python's 5), and the run maker's process starts importing Airflow."""
    import sys

    from export_tx.api import app as api

    started: list[bool] = []
    monkeypatch.setattr(api, "_run_maker_started", threading.Event())
    monkeypatch.setattr(airflow_side.maker, "start", lambda: started.append(True))
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        monkeypatch.setenv("EXPORT_TX_API_SWITCH_INTERVAL_MS", "2.5")
        assert client.get("/v1/me").status_code == 200
        assert sys.getswitchinterval() == pytest.approx(0.0025) and started == [True]
        monkeypatch.setenv("EXPORT_TX_API_SWITCH_INTERVAL_MS", "4")
        assert client.get("/v1/me").status_code == 200  # not the first request: nothing changes
        assert sys.getswitchinterval() == pytest.approx(0.0025) and started == [True]
        monkeypatch.setattr(api, "_run_maker_started", threading.Event())
        monkeypatch.setenv("EXPORT_TX_API_SWITCH_INTERVAL_MS", "0")  # 0: Python's own setting stays
        assert client.get("/v1/me").status_code == 200
        assert sys.getswitchinterval() == pytest.approx(0.0025) and started == [True, True]
        monkeypatch.delenv("EXPORT_TX_API_SWITCH_INTERVAL_MS")
        from export_tx import config

        assert config.api_switch_interval_seconds() == pytest.approx(0.001)
    finally:
        sys.setswitchinterval(before)
