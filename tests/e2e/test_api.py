"""The /exports API against the real api-server with the plugin loaded."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from datetime import date, timedelta
from urllib.parse import quote

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx import formats, storage
from tests.e2e.conftest import task_states, terminal, tx_url, wait_status
from tests.helpers import store

pytestmark = pytest.mark.stack
API = "/exports/v1"
RUNS = "/api/v2/dags/export_transaction/dagRuns"


def _request(client: httpx.Client, body: dict[str, object], **headers: str) -> httpx.Response:
    return client.post(f"{API}/transactions", json=body, headers=headers)


def _ids(client: httpx.Client) -> set[str]:
    return {t["id"] for t in client.get(f"{API}/transactions", params={"limit": 100}).json()["transactions"]}


def _scheduled(client: httpx.Client) -> set[str]:
    """Transactions the scheduler may start meanwhile (the session's declared bulk export)."""
    return {i for i in _ids(client) if i.startswith("bulk__")}


def _airflow_run(client: httpx.Client, run_id: str) -> dict[str, object]:
    answer = client.get(f"{RUNS}/{quote(run_id, safe='')}")
    answer.raise_for_status()
    return dict(answer.json())


# -- authentication and authorisation -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{API}/definitions"),
        ("GET", f"{API}/transactions"),
        ("POST", f"{API}/transactions"),
        ("GET", f"{API}/transactions/x"),
        ("GET", f"{API}/transactions/x/logs"),
        ("POST", f"{API}/transactions/x/cancel"),
        ("GET", f"{API}/transactions/x/download"),
        ("GET", f"{API}/me"),
        ("GET", f"{API}/definitions/demo_orders/preview"),
        ("GET", "/exports/ui"),
    ],
)
def test_every_route_requires_authentication(stack: AirflowStack, method: str, path: str) -> None:
    anonymous = httpx.request(method, stack.base_url + path, json={}, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    forged = httpx.request(method, stack.base_url + path, json={}, timeout=30,
                           headers={"Authorization": "Bearer not-a-token"})  # fmt: skip
    assert forged.status_code in (401, 403)


def test_a_viewer_reads_but_cannot_request_or_cancel(clients: dict[str, httpx.Client]) -> None:
    viewer = clients["viewer"]
    assert viewer.get(f"{API}/definitions").status_code == 200
    assert viewer.get(f"{API}/transactions").status_code == 200
    refused = _request(viewer, {"definition": "demo_orders"})
    assert refused.status_code == 403
    assert viewer.post(f"{API}/transactions/anything/cancel").status_code == 403
    assert viewer.get(f"{API}/me").json() == {"user": "viewer", "admin": False, "can_request": False,
                                               "can_cancel": False}  # fmt: skip


def test_definitions(clients: dict[str, httpx.Client]) -> None:
    body = clients["viewer"].get(f"{API}/definitions").json()
    by_name = {d["name"]: d for d in body["definitions"]}
    # The shipped definitions and the team's own (tests/definitions, YAML and Python).
    assert {"demo_orders", "orders", "demo_by_country", "legacy_demo_orders", "type_matrix"} <= set(by_name)
    demo = by_name["demo_orders"]
    assert demo["params_schema"]["additionalProperties"] is False
    assert demo["params_schema"]["properties"]["status"]["enum"][:2] == ["pending", "paid"]
    assert demo["limits"] == {"max_rows": 20_000_000, "retention_days_default": 7, "retention_days_max": 30}


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"definition": "nope"}, "definition", "not a registered definition; allowed: demo_by_country, demo_orders"),
        ({"definition": "demo_orders", "params": {"stauts": "paid"}}, "params.stauts", "allowed: since, status"),
        ({"definition": "demo_orders", "params": {"status": "lost"}}, "params.status", "allowed: pending"),
        ({"definition": "demo_orders", "batch_size": 5}, "batch_size", "allowed: 1,000 to 5,000,000"),
        ({"definition": "demo_orders", "notify_email": "nobody"}, "notify_email", "not an email"),
        ({"definition": "demo_orders", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_requests_answer_422_naming_the_field(
    clients: dict[str, httpx.Client], body: dict[str, object], field: str, fragment: str
) -> None:
    analyst = clients["analyst"]
    before = _ids(analyst)
    answer = _request(analyst, body)
    assert answer.status_code == 422, answer.text
    errors = {e["field"]: e["message"] for e in answer.json()["errors"]}
    assert fragment in errors[field]
    assert _ids(analyst) - before <= _scheduled(analyst)  # nothing else happened


def test_malformed_json_is_400(clients: dict[str, httpx.Client]) -> None:
    answer = clients["analyst"].post(f"{API}/transactions", content=b'{"definition": ',
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["detail"] == "the request body is not valid JSON"


def test_unknown_transaction_is_404(clients: dict[str, httpx.Client]) -> None:
    for suffix in ("", "/logs", "/download"):
        assert clients["admin"].get(tx_url("exp_does_not_exist") + suffix).status_code == 404
    assert clients["admin"].post(tx_url("exp_does_not_exist") + "/cancel").status_code == 404


@pytest.mark.parametrize(("name", "value"), [("limit", 0), ("limit", 101), ("offset", -1), ("state", "DONE")])
def test_bad_list_filters_are_422(clients: dict[str, httpx.Client], name: str, value: object) -> None:
    answer = clients["analyst"].get(f"{API}/transactions", params={name: value})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == name


# -- the happy path: request, poll, logs, download ------------------------------------------------


def test_request_poll_download(clients: dict[str, httpx.Client], stack: AirflowStack) -> None:
    analyst = clients["analyst"]
    answer = _request(
        analyst, {"definition": "demo_orders", "params": {"status": "shipped"}, "batch_size": 1000, "force": True}
    )
    assert answer.status_code == 202, answer.text
    tx = answer.json()
    assert answer.headers["Location"] == tx_url(tx["id"]) and int(answer.headers["Retry-After"]) > 0
    assert tx["state"] in ("REQUESTED", "RUNNING") and tx["requested_by"] == "analyst"
    assert tx["links"]["airflow"].endswith(tx["id"]) and tx["result"] is None
    # The token is the Airflow run id.
    assert _airflow_run(clients["admin"], tx["id"])["dag_run_id"] == tx["id"]

    seen_progress: set[int] = set()

    def done(status: dict[str, object]) -> bool:
        seen_progress.add(status["progress"]["percent"])  # type: ignore[index]
        return terminal(status)

    final = wait_status(analyst, tx["id"], done)
    assert final["state"] == "SUCCEEDED", final
    source_rows = 3000  # 15 % of the 20,000 demo orders are shipped
    assert final["progress"] == {"batches_total": 3, "batches_done": 3, "rows_written": source_rows, "percent": 100}
    assert final["result"]["rows"] == source_rows and final["error"] is None
    assert final["notification"] == {
        "email": None, "state": "not_requested", "sent_at": None,
        "webhook": {"url": None, "state": "not_requested", "delivered_at": None, "attempts": 0},
    }  # fmt: skip
    assert max(seen_progress) == 100

    download = analyst.get(tx_url(tx["id"]) + "/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == formats.get().media_type == "application/vnd.apache.parquet"
    assert 'filename="demo_orders-' in download.headers["content-disposition"]
    assert len(download.content) == final["result"]["bytes"]
    assert hashlib.sha256(download.content).hexdigest() == final["result"]["sha256"]
    after = analyst.get(tx_url(tx["id"])).json()
    assert after["downloaded_at"] is not None

    page1 = analyst.get(tx_url(tx["id"]) + "/logs", params={"limit": 3}).json()
    page2 = analyst.get(tx_url(tx["id"]) + "/logs", params={"after": page1["next_after"], "limit": 100}).json()
    events = page1["events"] + page2["events"]
    assert page2["next_after"] is None
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    messages = [e["message"] for e in events]
    assert messages[0] == "REQUESTED: requested by analyst"
    assert sum(m.startswith("batch ") for m in messages) == 3
    assert any(m.startswith("SUCCEEDED: 3,000 rows") for m in messages)
    assert messages[-1] == "downloaded by analyst"
    assert not any("Traceback" in m for m in messages)


def test_idempotency_key(clients: dict[str, httpx.Client]) -> None:
    analyst = clients["analyst"]
    key = f"key-{uuid.uuid4()}"
    body = {"definition": "demo_orders", "params": {"status": "returned"}, "batch_size": 5000}
    first = _request(analyst, body, **{"Idempotency-Key": key})
    second = _request(analyst, body, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    conflict = _request(analyst, {**body, "batch_size": 6000}, **{"Idempotency-Key": key})
    assert conflict.status_code == 409 and "different request" in conflict.json()["detail"]
    # The same key of another user is another transaction.
    other = _request(clients["bob"], body, **{"Idempotency-Key": key})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    runs = clients["admin"].get(RUNS, params={"limit": 100}).json()["dag_runs"]
    assert sum(r["dag_run_id"] == first.json()["id"] for r in runs) == 1
    for tx_id in (first.json()["id"], other.json()["id"]):
        assert wait_status(clients["admin"], tx_id, terminal)["state"] == "SUCCEEDED"


def test_each_user_sees_only_their_own(clients: dict[str, httpx.Client]) -> None:
    tx = _request(clients["bob"], {"definition": "demo_orders", "params": {"status": "pending"}, "force": True}).json()
    wait_status(clients["bob"], tx["id"], terminal)
    for user in ("analyst", "viewer"):
        for suffix in ("", "/logs", "/download"):
            assert clients[user].get(tx_url(tx["id"]) + suffix).status_code == 404, (user, suffix)
        listed = clients[user].get(f"{API}/transactions", params={"limit": 100}).json()["transactions"]
        assert tx["id"] not in {t["id"] for t in listed}
        assert {t["requested_by"] for t in listed} <= {user}
    assert clients["analyst"].post(tx_url(tx["id"]) + "/cancel").status_code == 404
    assert clients["admin"].get(tx_url(tx["id"])).status_code == 200
    everyone = clients["admin"].get(f"{API}/transactions", params={"limit": 100}).json()["transactions"]
    assert {"bob", "analyst"} <= {t["requested_by"] for t in everyone}
    mine = clients["bob"].get(f"{API}/transactions", params={"state": "SUCCEEDED"}).json()
    assert tx["id"] in {t["id"] for t in mine["transactions"]}


# -- cancel ------------------------------------------------------------------------------------


def _slow_request(client: httpx.Client, email: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"definition": "demo_orders", "params": {}, "batch_size": 1000, "force": True}
    if email:
        body |= {"notify_email": email, "notify_delay_minutes": 0}
    answer = _request(client, body)
    assert answer.status_code == 202
    return dict(answer.json())


def test_cancel_while_running(clients: dict[str, httpx.Client], smtp: object) -> None:
    analyst, admin = clients["analyst"], clients["admin"]
    email = f"cancel-{uuid.uuid4().hex[:8]}@example.com"
    tx = _slow_request(analyst, email)  # 20 batches
    running = wait_status(analyst, tx["id"], lambda s: s["progress"]["batches_done"] >= 1 or terminal(s))
    assert running["state"] == "RUNNING", running
    download = analyst.get(tx_url(tx["id"]) + "/download")
    assert download.status_code == 409 and "RUNNING" in download.json()["detail"]

    answer = analyst.post(tx_url(tx["id"]) + "/cancel")
    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "CANCELLED" and answer.json()["cancelled_by"] == "analyst"
    run_state = _airflow_run(admin, tx["id"])["state"]
    log = [e["message"] for e in analyst.get(tx_url(tx["id"]) + "/logs").json()["events"]]
    assert run_state == "failed", (run_state, log)  # the Airflow run is stopped at once

    time.sleep(3)  # anything still running has stopped by now
    done_then = store().get(tx["id"]).batches_done
    states = task_states(admin, tx["id"])
    assert all(state != "running" for state in states.values()), states
    assert states[("merge_parts", -1)] != "success"
    time.sleep(2)
    assert store().get(tx["id"]).batches_done == done_then  # no further batch started
    assert done_then < 20
    assert not storage.parts_dir(tx["id"]).exists()
    header = store().get(tx["id"])
    assert header.state.value == "CANCELLED" and header.result_uri is None
    assert header.notification_state == "skipped"
    assert smtp.collector.to(email) == []  # type: ignore[attr-defined]
    messages = [e["message"] for e in analyst.get(tx_url(tx["id"]) + "/logs").json()["events"]]
    assert "CANCELLED: cancelled by analyst" in messages
    # Nothing after the end: tasks still running when it was cancelled wrote nothing more.
    after = messages[messages.index("CANCELLED: cancelled by analyst") + 1 :]
    assert all(m.startswith("removed its files") for m in after), after

    # Terminal now: a second cancel is refused and changes nothing; the file is gone for good.
    again = analyst.post(tx_url(tx["id"]) + "/cancel")
    assert again.status_code == 409 and "CANCELLED" in again.json()["detail"]
    assert analyst.get(tx_url(tx["id"]) + "/download").status_code == 410
    assert store().get(tx["id"]).updated_at == header.updated_at


def test_cancel_of_a_finished_transaction_is_409(clients: dict[str, httpx.Client]) -> None:
    tx = _request(
        clients["analyst"], {"definition": "demo_orders", "params": {"status": "cancelled"}, "force": True}
    ).json()
    assert wait_status(clients["analyst"], tx["id"], terminal)["state"] == "SUCCEEDED"
    answer = clients["analyst"].post(tx_url(tx["id"]) + "/cancel")
    assert answer.status_code == 409
    assert clients["analyst"].get(tx_url(tx["id"])).json()["state"] == "SUCCEEDED"


def test_marking_the_run_failed_in_airflow_cancels_the_transaction(
    stack: AirflowStack, clients: dict[str, httpx.Client]
) -> None:
    analyst, admin = clients["analyst"], clients["admin"]
    tx = _slow_request(analyst)
    wait_status(analyst, tx["id"], lambda s: s["progress"]["batches_done"] >= 1 or terminal(s))
    # What the Airflow UI's "mark run as failed" does:
    patched = admin.patch(f"{RUNS}/{quote(tx['id'], safe='')}", json={"state": "failed"})
    assert patched.status_code == 200, patched.text
    final = wait_status(analyst, tx["id"], terminal, timeout=30)
    assert final["state"] == "CANCELLED"
    assert final["cancelled_by"] == "airflow"
    header = store().get(tx["id"])
    assert header.state.value == "CANCELLED" and header.result_uri is None
    # The listener only records (it runs in Airflow's own loops); the housekeeping DAG removes
    # whatever files the stopped tasks left.
    run = stack.trigger(admin, {}, dag_id="export_housekeeping")
    assert stack.wait_run(admin, run["dag_run_id"], dag_id="export_housekeeping") == "success"
    assert not storage.tx_root(tx["id"]).exists()


# -- the same request twice ---------------------------------------------------------------------


def test_the_same_export_requested_at_once_from_eight_clients_is_one_export(
    stack: AirflowStack, clients: dict[str, httpx.Client]
) -> None:
    """Eight identical requests race through the real api-server (its batched header writer, the
    store's unique key): one export starts, seven answers name it. Once it has
    succeeded, the same request answers it again (its file is downloadable); "force" starts another."""
    from concurrent.futures import ThreadPoolExecutor

    analyst = clients["analyst"]
    day = date(2025, 1, 1) + timedelta(days=uuid.uuid4().int % 300)  # a request no other test makes
    body = {"definition": "demo_orders", "params": {"status": "returned", "since": str(day)}, "label": "race"}
    auth = {"Authorization": analyst.headers["Authorization"]}
    barrier = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.base_url, headers=auth, timeout=60) as client:
            barrier.wait()
            return client.post(f"{API}/transactions", json=body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202], [a.text[:200] for a in answers]
    (made,) = [a.json()["id"] for a in answers if a.status_code == 202]
    assert {a.json()["duplicate"]["of"] for a in answers if a.status_code == 200} == {made}
    mine = analyst.get(f"{API}/transactions", params={"q": "race", "limit": 100}).json()["transactions"]
    assert [t["id"] for t in mine if t["params"] == body["params"]] == [made]
    assert wait_status(analyst, made, terminal)["state"] == "SUCCEEDED"
    again = _request(analyst, body)
    assert again.status_code == 200 and again.json()["duplicate"] == {
        "of": made, "state": "SUCCEEDED", "matched": ["definition", "params", "format"],
        "hint": 'send "force": true to start a new export anyway'}  # fmt: skip
    forced = _request(analyst, {**body, "force": True})
    assert forced.status_code == 202 and forced.json()["id"] != made
    assert wait_status(analyst, forced.json()["id"], terminal)["state"] == "SUCCEEDED"
