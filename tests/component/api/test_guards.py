"""The /exports app's own guards, without a stack: bounded bodies and fields, errors that never
echo what they refuse, same-origin mutations for cookie sessions, store outages as 503, a failed
trigger that frees its Idempotency-Key, storage locations for admins only.

Airflow's authentication is replaced by a fixed user (the real one is tested on the real
api-server in tests/e2e); the header store is a real SQLite file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from export_tx.api import airflow_side
from export_tx.api import app as api
from export_tx.store import HeaderStore
from tests.helpers import FakeUser, signed_in


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_db: Path) -> Iterator[Any]:
    store = HeaderStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_schema()
    who = {"user": FakeUser("ana", "USER")}
    triggered: list[str] = []
    monkeypatch.setattr(airflow_side, "trigger_run", lambda tx_id, conf, user: triggered.append(tx_id))
    with signed_in(store, who) as app, TestClient(app, base_url="http://airflow.test") as c:
        c.store, c.who, c.triggered = store, who, triggered  # type: ignore[attr-defined]
        yield c


def _post(client: Any, body: Any, **headers: str) -> Any:
    return client.post("/v1/transactions", content=json.dumps(body), headers={"Content-Type": "application/json",
                                                                              **headers})  # fmt: skip


def test_a_body_over_64_kib_is_413_and_nothing_is_recorded(client: Any) -> None:
    big = {"definition": "demo_orders", "params": {"status": "x" * 70_000}}
    answer = _post(client, big)
    assert answer.status_code == 413
    assert answer.json()["errors"] == [{"field": "body", "message": "larger than 65,536 bytes"}]
    chunked = client.post("/v1/transactions", content=iter([b'{"definition": "', b"x" * 70_000, b'"}']),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413
    assert client.store.list_headers()[1] == 0


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"definition": "demo_orders", "notify_email": ",".join(f"u{i}@example.com" for i in range(11))},
         "notify_email", "11 addresses; allowed: at most 10 addresses"),
        ({"definition": "demo_orders", "notify_email": "a" * 300 + "@example.com"},
         "notify_email", "is not an email address; allowed: at most 10"),
        ({"definition": "demo_orders", "notify_email": "x@example.com, " * 3000},
         "notify_email", "too long; allowed:"),
        ({"definition": "d" * 50_000}, "definition", "is not a registered definition"),
        ({"definition": "demo_orders", "params": {"status": "s" * 20_000}}, "params.status", "is not allowed"),
        ({"definition": "demo_by_country", "params": {"country": 5}}, "params.country", "is not allowed"),
        ({"definition": "demo_orders", "retention_days": 3650}, "retention_days", "allowed: 1 to 30"),
        # No webhook secret in this deployment: refused before the URL is even looked at.
        ({"definition": "demo_orders", "notify_webhook": "https://169.254.169.254/" + "x" * 1900},
         "notify_webhook", "webhooks are not enabled in this deployment"),
    ],
)  # fmt: skip
def test_bounded_fields_name_the_field_and_never_echo_the_value(
    client: Any, body: dict[str, Any], field: str, fragment: str
) -> None:
    answer = _post(client, body)
    assert answer.status_code == 422, answer.text
    errors = {e["field"]: e["message"] for e in answer.json()["errors"]}
    assert fragment in errors[field]
    assert len(answer.content) < 2_000, "an error quotes only a few characters of what it refuses"


def test_thousands_of_unknown_parameters_answer_a_short_list(client: Any) -> None:
    params = {f"p{i}_{'x' * 30}": 1 for i in range(1_000)}
    answer = _post(client, {"definition": "demo_orders", "params": params})
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert len(errors) == 20 and errors[-1]["message"] == "… and 981 more errors"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/transactions?offset=9223372036854775808", "offset"),
        ("/v1/transactions?offset=-1", "offset"),
        ("/v1/transactions?limit=1000", "limit"),
        (f"/v1/transactions?definition={'d' * 500}", "definition"),
        ("/v1/transactions/x/logs?after=18446744073709551616", "after"),
    ],
)
def test_query_parameters_are_bounded(client: Any, path: str, field: str) -> None:
    client.store.create("x", definition="demo_orders", params={}, batch_size=1000, requested_by="ana")
    answer = client.get(path)
    assert answer.status_code == 422, answer.text
    assert field in {e["field"] for e in answer.json()["errors"]}


def test_a_huge_token_is_simply_not_found(client: Any) -> None:
    answer = client.get("/v1/transactions/" + "t" * 10_000)
    assert answer.status_code == 404 and len(answer.content) < 200


def test_cookie_sessions_mutate_only_from_the_same_origin(client: Any) -> None:
    client.cookies.set("_token", "a-session")
    body = {"definition": "demo_orders", "force": True}
    foreign = _post(client, body, Origin="https://evil.example")
    assert foreign.status_code == 403 and foreign.json()["errors"][0]["field"] == "Origin"
    assert _post(client, body).status_code == 403  # no Origin at all
    assert _post(client, body, Origin="http://airflow.test").status_code == 202
    client.cookies.clear()
    assert _post(client, body, Authorization="Bearer t").status_code == 202  # tokens are not sent by browsers


def test_a_failed_trigger_frees_its_idempotency_key(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_: Any) -> None:
        raise ConnectionError("metadata database unreachable")

    monkeypatch.setattr(airflow_side, "trigger_run", down)
    first = _post(client, {"definition": "demo_orders"}, **{"Idempotency-Key": "k1"})
    assert first.status_code == 503 and first.headers["Retry-After"] == "5"
    monkeypatch.setattr(airflow_side, "trigger_run", lambda *_: None)
    second = _post(client, {"definition": "demo_orders"}, **{"Idempotency-Key": "k1"})
    assert second.status_code == 202 and second.json()["state"] == "REQUESTED"
    again = _post(client, {"definition": "demo_orders"}, **{"Idempotency-Key": "k1"})
    assert again.json()["id"] == second.json()["id"]  # from now on the key replays the started one


def test_a_store_outage_answers_503_with_retry_after(client: Any) -> None:
    down = HeaderStore("postgresql+psycopg://postgres@127.0.0.1:1/export_tx")  # nothing listens there
    api.app.dependency_overrides[api.get_store] = lambda: down
    answer = client.get("/v1/transactions")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["detail"] == "the transaction store is unavailable for a moment; try again"


def test_requesters_see_download_links_and_admins_storage(client: Any) -> None:
    from export_tx.states import State

    s = client.store
    s.create("done", definition="demo_orders", params={}, batch_size=1000, requested_by="ana")
    s.transition("done", State.RUNNING, "x")
    s.transition("done", State.MERGING, "x")
    s.transition("done", State.SUCCEEDED, "x", result_uri="s3://secret_conn@bucket/prefix/done.parquet",
                 result_rows=1, result_bytes=1, result_sha256="0" * 64)  # fmt: skip
    mine = client.get("/v1/transactions/done").json()["result"]
    assert mine["uri"] == "/exports/v1/transactions/done/download" and mine["storage_uri"] is None
    assert "secret_conn" not in client.get("/v1/transactions").text
    client.who["user"] = FakeUser("root", "ADMIN")
    assert client.get("/v1/transactions/done").json()["result"]["storage_uri"].startswith("s3://secret_conn@")


def test_a_definition_that_cannot_run_here_is_listed_as_such_and_refused_before_a_run(
    client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXPORT_TX_DEMO_DB", str(tmp_path / "not-generated.db"))  # read on every use
    listed = {d["name"]: d for d in client.get("/v1/definitions").json()["definitions"]}
    assert listed["demo_orders"]["available"] is False
    assert "does not exist here (make demo creates it)" in listed["demo_orders"]["unavailable"]
    answer = _post(client, {"definition": "demo_orders"})
    assert answer.status_code == 422
    (error,) = answer.json()["errors"]
    assert error["field"] == "definition" and error["message"].startswith("demo_orders cannot run in this deployment")
    assert client.triggered == [] and client.store.list_headers()[1] == 0
