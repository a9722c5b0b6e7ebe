"""Webhooks end to end: whole export runs with ``dag.test(logical_date=None)`` and the export's
``export_notification`` run, delivering to a real HTTP server on loopback that answers as told.
Asserts on what the receiver got (the exact body, the signature verified with the secret, the
attempts) and on what the header and the processing log recorded."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from export_tx import pipeline, storage
from export_tx.notifications import webhook
from export_tx.states import State, WebhookState
from tests.helpers import file_sha256, local_path, run_export, store
from tests.webhook_receiver import WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")

SECRET = "whsec_dag_test_secret"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _webhooks_on_loopback(monkeypatch_module: pytest.MonkeyPatch) -> None:
    """The deployment: a secret, loopback allowed, plain http allowed (tests only), short retries."""
    monkeypatch_module.setenv("EXPORT_TX_WEBHOOK_SECRET", SECRET)
    monkeypatch_module.setenv("EXPORT_TX_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch_module.setenv("EXPORT_TX_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch_module.setenv("EXPORT_TX_WEBHOOK_RETRY_DELAY_SECONDS", "0.2")
    monkeypatch_module.setenv("EXPORT_TX_WEBHOOK_TIMEOUT_SECONDS", "5")


@pytest.fixture(scope="module")
def notification_dag(_webhooks_on_loopback: None) -> Any:
    """Parsed here, after the environment is set: its retry delays are read at parse time."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["export_notification"]


def run_notification(dag: Any, tx_id: str) -> Any:
    """The export's notification run, as ``request_notification`` starts it (every Param given:
    ``dag.test`` keeps the last run's conf in the DAG's Params)."""
    return dag.test(logical_date=None, run_conf=copy.deepcopy({"transaction": tx_id, "resend": False}))


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[WebhookReceiver]:
    with webhook_receiver(request.param) as r:
        yield r


def _webhook_events(tx_id: str) -> list[dict[str, Any]]:
    return [e.data or {} for e in store().events(tx_id, kind="notification")]


@pytest.mark.parametrize("receiver", [[503, 503, 200]], indirect=True)
def test_a_succeeded_export_is_delivered_after_two_503s(receiver: WebhookReceiver, notification_dag: Any) -> None:
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000,
                      "notify_webhook": receiver.url})  # fmt: skip
    assert run.state == "success"
    tx = run.run_id
    header = store().get(tx)
    assert header.state == State.SUCCEEDED, header.error
    assert (header.webhook_url, header.webhook_state, header.webhook_attempts) == (receiver.url, "pending", 0)
    assert receiver.received == [], "nothing is sent from the export's own run on success"

    notified = run_notification(notification_dag, tx)
    assert notified.state == "success"
    tis = {ti.task_id: ti for ti in notified.get_task_instances()}
    assert tis["deliver_webhook"].state == "success" and tis["deliver_webhook"].try_number == 3
    assert tis["wait_for_download_or_delay"].state == "skipped"  # no e-mail was asked for

    assert len(receiver.received) == 3
    bodies = {r.body for r in receiver.received}
    ids = {r.headers["Export-Event-Id"] for r in receiver.received}
    assert len(ids) == 1, "one event: the same id on every attempt"
    delivered = receiver.received[-1]
    assert delivered.headers["Content-Type"] == "application/json"
    assert delivered.headers["User-Agent"] == "export-tx-webhook/1"
    for got in receiver.received:
        assert webhook.verify(SECRET, got.headers["Export-Signature"], got.body)
        assert not webhook.verify("another secret", got.headers["Export-Signature"], got.body)
    event = json.loads(delivered.body)
    assert event["id"] == webhook.event_id(tx, "export.succeeded") == delivered.headers["Export-Event-Id"]
    assert event["type"] == "export.succeeded"
    final = store().get(tx)
    assert final.finished_at is not None and event["created"] == int(final.finished_at.timestamp())
    record = event["data"]["transaction"]
    assert record["id"] == tx and record["state"] == "SUCCEEDED" and record["definition"] == "demo_orders"
    path = local_path(final.result_uri or "")
    assert record["result"]["sha256"] == final.result_sha256 == file_sha256(path)
    assert record["result"]["rows"] == final.result_rows and record["result"]["rows"] > 1000
    assert record["result"]["bytes"] == path.stat().st_size
    assert record["result"]["uri"].endswith(f"/exports/v1/transactions/{quote(tx, safe='')}/download")
    assert record["result"]["storage_uri"] is None, "storage locations are never sent out"
    assert all(SECRET.encode() not in b for b in bodies)

    assert (final.webhook_state, final.webhook_attempts) == (WebhookState.DELIVERED, 3)
    assert final.webhook_delivered_at is not None
    assert _webhook_events(tx) == [
        {"webhook": "pending", "event": "export.succeeded", "attempt": 1, "status": 503},
        {"webhook": "pending", "event": "export.succeeded", "attempt": 2, "status": 503},
        {"webhook": "delivered", "event": "export.succeeded", "attempt": 3, "status": 200},
    ]
    messages = [e.message for e in store().events(tx, kind="notification")]
    assert all(SECRET not in m for m in messages)

    from export_tx.api.views import transaction

    shown = transaction(final).notification.webhook
    assert shown is not None and shown.model_dump() == {
        "url": receiver.url, "state": "delivered", "delivered_at": final.webhook_delivered_at, "attempts": 3,
    }  # fmt: skip


@pytest.mark.parametrize("receiver", [[200]], indirect=True)
def test_a_failed_export_delivers_export_failed_at_once(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 2 dies on every attempt (a full disk): the export's own run tells the webhook."""
    real = pipeline.export_batch

    def full_disk(st: Any, tx_id: str, batch_no: int) -> pipeline.BatchResult:
        if batch_no != 2:
            return real(st, tx_id, batch_no)
        part = storage.part_path(tx_id, batch_no)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"PAR1 half a part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "export_batch", full_disk)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000,
                      "notify_webhook": receiver.url})  # fmt: skip
    assert run.state == "failed"
    header = store().get(run.run_id)
    assert header.state == State.FAILED
    (got,) = receiver.received
    assert webhook.verify(SECRET, got.headers["Export-Signature"], got.body)
    event = json.loads(got.body)
    assert event["type"] == "export.failed" and event["id"] == webhook.event_id(run.run_id, "export.failed")
    record = event["data"]["transaction"]
    assert record["state"] == "FAILED" and record["result"] is None
    assert (
        record["error"]
        == header.error
        == ("batch 2 failed (OSError: [Errno 28] No space left on device); the Airflow task log has the details")
    )
    assert (header.webhook_state, header.webhook_attempts) == (WebhookState.DELIVERED, 1)
    assert _webhook_events(run.run_id) == [
        {"webhook": "delivered", "event": "export.failed", "attempt": 1, "status": 200}
    ]


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_a_400_is_final_after_one_attempt(receiver: WebhookReceiver, notification_dag: Any) -> None:
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 5000,
                      "notify_webhook": receiver.url})  # fmt: skip
    assert run.state == "success"
    notified = run_notification(notification_dag, run.run_id)
    tis = {ti.task_id: ti for ti in notified.get_task_instances()}
    assert tis["deliver_webhook"].state == "failed" and tis["deliver_webhook"].try_number == 1
    assert len(receiver.received) == 1
    header = store().get(run.run_id)
    assert (header.webhook_state, header.webhook_attempts, header.webhook_delivered_at) == (
        WebhookState.FAILED, 1, None)  # fmt: skip
    assert _webhook_events(run.run_id) == [
        {"webhook": "failed", "event": "export.succeeded", "attempt": 1, "status": 400}
    ]
