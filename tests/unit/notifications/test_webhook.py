"""The webhook channel on its own: the signature a receiver verifies, the event's body, who may be
called (every refusal names ``notify_webhook`` and never echoes the URL), and what one POST to a
real HTTP server on loopback counts as: delivered, worth a retry, or final."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest

from export_tx import config
from export_tx.errors import RequestInvalid
from export_tx.notifications import webhook
from export_tx.request import parse_request
from export_tx.states import State, WebhookState
from export_tx.store import HeaderStore, utcnow
from tests.webhook_receiver import webhook_receiver

SECRET = "whsec_test_0123456789"
HOOK = "https://hooks.example.com/exports?token=receiver-own-token"


@pytest.fixture(autouse=True)
def _deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOWED_HOSTS", "hooks.example.com, *.partner.example.org, 127.0.0.1")
    monkeypatch.delenv("EXPORT_TX_WEBHOOK_ALLOW_HTTP", raising=False)


# -- the signature -------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_secret_only() -> None:
    body = b'{"id":"evt_1","type":"export.succeeded"}'
    header = webhook.signature_header(SECRET, body)
    t, v1 = header.split(",")
    assert t.startswith("t=") and abs(int(t[2:]) - time.time()) <= 2
    assert v1 == "v1=" + webhook.sign(SECRET, int(t[2:]), body) and len(v1) == 3 + 64
    assert webhook.verify(SECRET, header, body)
    assert webhook.verify(SECRET, header, body.decode())  # the raw text, as a framework may hand it over
    assert not webhook.verify("another secret", header, body)


def test_a_changed_body_or_an_old_signature_fails() -> None:
    body = b'{"id":"evt_1","rows":1000}'
    assert not webhook.verify(SECRET, webhook.signature_header(SECRET, body), b'{"id":"evt_1","rows":1001}')
    old = webhook.signature_header(SECRET, body, timestamp=int(time.time()) - 301)
    assert not webhook.verify(SECRET, old, body)
    assert webhook.verify(SECRET, old, body, tolerance_s=600)
    assert not webhook.verify(SECRET, "v1=" + webhook.sign(SECRET, int(time.time()), body), body)  # no t
    assert not webhook.verify(SECRET, "", body)


def test_a_rotated_secret_is_accepted_among_several_signatures() -> None:
    body = b"{}"
    t = int(time.time())
    header = f"t={t},v1={webhook.sign('old', t, body)},v1={webhook.sign(SECRET, t, body)}"
    assert webhook.verify(SECRET, header, body) and webhook.verify("old", header, body)


# -- the event ----------------------------------------------------------------------------------------


def _succeeded_header(url: str = HOOK) -> tuple[HeaderStore, str]:
    store = HeaderStore.from_settings()
    tx = f"hook-{uuid.uuid4().hex}"
    store.create(tx, definition="demo_orders", params={"status": "paid"}, batch_size=1000, requested_by="ana",
                 label="Q3 for finance", format="csv", notify_webhook=url)  # fmt: skip
    for target in (State.RUNNING, State.MERGING):
        store.transition(tx, target, target.value)
    store.transition(tx, State.SUCCEEDED, "published", result_uri="file:///tmp/x.csv", result_rows=1234,
                     result_bytes=5678, result_sha256="ab" * 32,
                     expires_at=utcnow() + timedelta(days=7))  # fmt: skip
    return store, tx


def test_the_event_body_is_the_status_record_with_absolute_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TX_PUBLIC_URL", "https://airflow.example.com")
    store, tx = _succeeded_header()
    header = store.get(tx)
    event = json.loads(webhook.event_body(header, webhook.SUCCEEDED))
    assert set(event) == {"id", "type", "created", "data"}
    assert event["id"] == webhook.event_id(tx, "export.succeeded") and event["id"].startswith("evt_")
    assert event["id"] != webhook.event_id(tx, "export.failed") != webhook.event_id(tx + "x", "export.failed")
    assert event["type"] == "export.succeeded"
    assert header.finished_at is not None and event["created"] == int(header.finished_at.timestamp())
    record = event["data"]["transaction"]
    assert (record["id"], record["state"], record["definition"], record["label"], record["format"]) == (
        tx, "SUCCEEDED", "demo_orders", "Q3 for finance", "csv")  # fmt: skip
    download = f"https://airflow.example.com/exports/v1/transactions/{tx}/download"
    assert record["result"] == {"uri": download, "storage_uri": None, "rows": 1234, "bytes": 5678,
                                "sha256": "ab" * 32, "expires_at": record["result"]["expires_at"],
                                "partial": False, "ranges": None}  # fmt: skip
    assert record["links"]["self"] == f"https://airflow.example.com/exports/v1/transactions/{tx}"
    assert record["error"] is None and record["created_at"] and record["finished_at"]
    assert record["notification"]["webhook"] == {"url": HOOK, "state": "pending", "delivered_at": None,
                                                 "attempts": 0}  # fmt: skip
    # Stable across retries: the same id and created for the same event, whenever it is built.
    again = json.loads(webhook.event_body(store.get(tx), webhook.SUCCEEDED))
    assert (again["id"], again["created"]) == (event["id"], event["created"])


# -- who may be called ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [HOOK, "https://a.partner.example.org/x", "https://a.b.partner.example.org:8443/x",
                                 "https://HOOKS.example.com/caps"])  # fmt: skip
def test_an_allowed_url_is_kept(url: str) -> None:
    assert parse_request({"definition": "demo_orders", "notify_webhook": f" {url} "}).notify_webhook == url


@pytest.mark.parametrize(("url", "says"), [
    ("https://internal.corp.local/hook", "its host is not one this deployment allows; allowed: an https URL"),
    ("https://partner.example.org/x", "its host is not one this deployment allows"),  # the pattern needs a label
    ("https://hooks.example.com.evil.test/x", "its host is not one this deployment allows"),
    ("https://169.254.169.254/latest/meta-data", "its host is not one this deployment allows"),
    ("http://hooks.example.com/x", "plain http is not allowed in this deployment"),
    ("https://user:pa55word@hooks.example.com/x", "must not carry a user or password"),
    ("https://hooks.example.com\\@169.254.169.254/x", "is not a URL"),
    ("https://hooks.example.com/" + "a" * config.WEBHOOK_URL_MAX_CHARS, "too long; allowed:"),
    ("not a url at all", "is not a URL"),
    ("ftp://hooks.example.com/x", "is not a URL"),
    ("https://hooks.example.com:port/x", "is not a URL"),
    ("https:///no-host", "is not a URL"),
    (42, "must be text"),
])  # fmt: skip
def test_a_refused_url_names_the_field_says_what_is_allowed_and_is_not_echoed(url: object, says: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        parse_request({"definition": "demo_orders", "notify_webhook": url})
    (error,) = refused.value.errors
    assert error.field == "notify_webhook"
    assert says in error.message
    assert "hooks.example.com, *.partner.example.org, 127.0.0.1" in error.message  # what is allowed
    assert "2,000 characters" in error.message
    if isinstance(url, str):
        for part in ("internal.corp", "pa55word", "169.254", "evil.test", "aaaaaaaa", "not a url", "/no-host"):
            assert part not in error.message or part in "hooks.example.com, *.partner.example.org"


def test_http_is_accepted_only_where_the_deployment_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOW_HTTP", "1")
    url = "http://127.0.0.1:8123/hooks"
    assert parse_request({"definition": "demo_orders", "notify_webhook": url}).notify_webhook == url
    with pytest.raises(RequestInvalid, match="notify_webhook: its host is not one"):
        parse_request({"definition": "demo_orders", "notify_webhook": "http://localhost:8123/hooks"})


def test_without_a_secret_webhooks_are_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXPORT_TX_WEBHOOK_SECRET")
    with pytest.raises(RequestInvalid) as refused:
        parse_request({"definition": "demo_orders", "notify_webhook": HOOK})
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("notify_webhook", "webhooks are not enabled in this deployment")
    ]
    assert parse_request({"definition": "demo_orders"}).notify_webhook is None  # without one, nothing changes


def test_patterns_wider_than_a_domain_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOWED_HOSTS", "*, *.com, a*.example.com, *.ok.example.com, Exact.Host.")
    assert config.webhook_allowed_hosts() == ("*.ok.example.com", "exact.host")


# -- one POST to a real receiver ----------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "delivered", "transient"), [
    (200, True, False), (204, True, False), (503, False, True), (500, False, True), (429, False, True),
    (400, False, False), (404, False, False), (410, False, False), (302, False, False),
])  # fmt: skip
def test_what_an_answer_counts_as(code: int, delivered: bool, transient: bool) -> None:
    body = b'{"id":"evt_x"}'
    with webhook_receiver([code]) as receiver:
        result = webhook.post(receiver.url, body, SECRET, "evt_x", timeout=5)
    assert (result.delivered, result.transient, result.status) == (delivered, transient, code)
    (got,) = receiver.received  # a redirect is not followed: one request, no second one
    assert got.body == body and got.path == "/hooks/exports"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "export-tx-webhook/1"
    assert got.headers["Export-Event-Id"] == "evt_x"
    assert webhook.verify(SECRET, got.headers["Export-Signature"], got.body)
    assert SECRET not in json.dumps(got.headers)


def test_a_refused_connection_is_transient() -> None:
    with webhook_receiver() as receiver:
        url = receiver.url
    result = webhook.post(url, b"{}", SECRET, "evt_y", timeout=2)  # the server is gone: nothing listens
    assert (result.delivered, result.transient, result.error) == (False, True, "ConnectError")


def test_a_url_no_longer_allowed_is_given_up_before_any_post(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOW_HTTP", "1")
    with webhook_receiver() as receiver:
        store, tx = _succeeded_header(receiver.url)
        monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOWED_HOSTS", "hooks.example.com")  # the deployment changed its mind
        result = webhook.attempt(store, store.get(tx), webhook.SUCCEEDED, last=False)
    assert (result.delivered, result.transient) == (False, False)
    assert receiver.received == []
    header = store.get(tx)
    assert (header.webhook_state, header.webhook_attempts) == (WebhookState.FAILED, 0)
    (event,) = [e for e in store.events(tx) if e.kind == "notification"]
    assert "the URL is no longer allowed" in event.message and "127.0.0.1" not in event.message


@pytest.mark.parametrize(("answers", "posts", "state"), [
    ([503, 200], 2, WebhookState.DELIVERED),  # transient: tried again at once
    ([503, 503, 503, 503], 3, WebhookState.FAILED),  # a few quick tries, then given up
    ([400, 200], 1, WebhookState.FAILED),  # final: never tried again
])  # fmt: skip
def test_a_failed_exports_event_is_retried_in_process_only_when_transient(
    monkeypatch: pytest.MonkeyPatch, answers: list[int], posts: int, state: WebhookState
) -> None:
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("EXPORT_TX_WEBHOOK_RETRY_DELAY_SECONDS", "0.05")
    store = HeaderStore.from_settings()
    with webhook_receiver(answers) as receiver:
        tx = f"hook-{uuid.uuid4().hex}"
        store.create(tx, definition="demo_orders", params={}, batch_size=1000, requested_by="ana",
                     notify_webhook=receiver.url)  # fmt: skip
        store.fail(tx, "the source is unreachable")
        webhook.deliver_failure_event(store, store.get(tx))  # never raises
        webhook.deliver_failure_event(store, store.get(tx))  # a retried finalize sends nothing more
    assert len(receiver.received) == posts
    assert {r.headers["Export-Event-Id"] for r in receiver.received} == {webhook.event_id(tx, "export.failed")}
    event = json.loads(receiver.received[-1].body)
    assert event["type"] == "export.failed"
    assert event["data"]["transaction"]["error"] == "the source is unreachable"
    header = store.get(tx)
    assert (header.webhook_state, header.webhook_attempts) == (state, posts)
    assert [e.data["attempt"] for e in store.events(tx, kind="notification") if e.data] == list(range(1, posts + 1))
