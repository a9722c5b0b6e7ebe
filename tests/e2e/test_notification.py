"""Download-aware e-mail with a real SMTP server on loopback and the real triggerer."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime, timedelta

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx.config import notification_run_id
from tests.e2e.conftest import terminal, tx_url, wait_status, wait_task
from tests.smtp import SmtpServer

pytestmark = pytest.mark.stack
API = "/exports/v1"
NOTIFY = "export_notification"


def _export_run(client: httpx.Client, tx_id: str, timeout: float = 60) -> str:
    """The export's Airflow run state once it has ended (it ends right after starting the e-mail)."""
    from urllib.parse import quote

    deadline = time.monotonic() + timeout
    while True:
        state = str(client.get(f"/api/v2/dags/export_transaction/dagRuns/{quote(tx_id, safe='')}").json()["state"])
        if state in ("success", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def _address() -> str:
    return f"ana-{uuid.uuid4().hex[:8]}@example.com"


def _request(client: httpx.Client, email: str, delay: float, params: dict[str, str] | None = None) -> str:
    answer = client.post(
        f"{API}/transactions",
        json={"definition": "demo_orders", "params": params or {"status": "paid"}, "batch_size": 1000,
              "notify_email": email, "notify_delay_minutes": delay, "force": True},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_email_arrives_after_the_delay_with_the_link(
    clients: dict[str, httpx.Client], smtp: SmtpServer, stack: AirflowStack
) -> None:
    analyst = clients["analyst"]
    email = _address()
    tx_id = _request(analyst, email, delay=0.1)  # 6 seconds
    done = wait_status(analyst, tx_id, terminal)
    assert done["state"] == "SUCCEEDED" and done["notification"]["state"] == "pending"
    mail = smtp.collector.wait_for(email, timeout=90)
    finished = datetime.fromisoformat(done["finished_at"])
    assert mail.received_at - finished >= timedelta(seconds=6)
    assert mail.sender == "exports@example.com"
    assert mail.subject == "Your export demo_orders is ready (2,000 rows)"
    link = f"http://localhost:{stack.port}{tx_url(tx_id)}/download"
    assert f'href="{link}"' in mail.body
    assert done["result"]["sha256"] in mail.body and "Rows: 2,000" in mail.body
    status = wait_status(analyst, tx_id, lambda s: s["notification"]["state"] == "sent")
    assert status["notification"]["sent_at"] is not None and status["notification"]["email"] == email
    assert len(smtp.collector.to(email)) == 1
    # The link in the mail works for the requester and serves the announced file.
    file = analyst.get(link.removeprefix(f"http://localhost:{stack.port}"))
    assert hashlib.sha256(file.content).hexdigest() == done["result"]["sha256"]


def test_no_email_when_downloaded_during_the_delay(clients: dict[str, httpx.Client], smtp: SmtpServer) -> None:
    analyst, admin = clients["analyst"], clients["admin"]
    email = _address()
    tx_id = _request(analyst, email, delay=1.0)  # a minute: plenty of time to download first
    assert wait_status(analyst, tx_id, terminal)["state"] == "SUCCEEDED"
    run = notification_run_id(tx_id)
    assert wait_task(admin, run, "wait_for_download_or_delay", {"deferred"}, timeout=60, dag_id=NOTIFY) == "deferred"
    # The e-mail waits in its own run: the export's run has already ended.
    assert _export_run(admin, tx_id) == "success"
    started = time.monotonic()
    assert analyst.get(tx_url(tx_id) + "/download").status_code == 200
    # The sensor ends early (well before the minute) and the e-mail is skipped.
    assert wait_task(admin, run, "wait_for_download_or_delay", {"skipped"}, timeout=40, dag_id=NOTIFY) == "skipped"
    assert time.monotonic() - started < 40
    assert wait_task(admin, run, "notify_requester", {"skipped"}, timeout=30, dag_id=NOTIFY) == "skipped"
    status = analyst.get(tx_url(tx_id)).json()
    assert status["notification"]["state"] == "skipped_downloaded" and status["notification"]["sent_at"] is None
    time.sleep(1)
    assert smtp.collector.to(email) == []
    messages = [e["message"] for e in analyst.get(tx_url(tx_id) + "/logs").json()["events"]]
    assert "e-mail not sent: the file was downloaded before it went out" in messages


def test_mail_server_down_marks_the_notification_failed_not_the_export(
    clients: dict[str, httpx.Client], smtp: SmtpServer
) -> None:
    analyst, admin = clients["analyst"], clients["admin"]
    email = _address()
    smtp.stop()
    try:
        tx_id = _request(analyst, email, delay=0)
        assert wait_status(analyst, tx_id, terminal)["state"] == "SUCCEEDED"
        run = notification_run_id(tx_id)
        assert wait_task(admin, run, "notify_requester", {"failed"}, timeout=120, dag_id=NOTIFY) == "failed"
        assert _export_run(admin, tx_id) == "success"  # the export's run follows the export, not the e-mail
    finally:
        smtp.start()
    status = analyst.get(tx_url(tx_id)).json()
    assert status["state"] == "SUCCEEDED" and status["result"] is not None
    assert status["notification"]["state"] == "failed"
    events = analyst.get(tx_url(tx_id) + "/logs").json()["events"]
    failures = [e["message"] for e in events if e["kind"] == "notification"]
    assert failures and failures[-1].startswith(f"e-mail to {email} could not be sent (")
    assert any(e["kind"] == "retry" and "e-mail" in e["message"] for e in events)
    assert smtp.collector.to(email) == []


def test_a_failed_export_is_mailed_at_once(
    clients: dict[str, httpx.Client], smtp: SmtpServer, stack: AirflowStack
) -> None:
    admin = clients["admin"]
    email = _address()
    # Our API would refuse this request up front; Airflow's own REST API (the platform team's)
    # lets it reach the run.
    conf = {"definition": "demo_orders", "params": {"status": "lost"}, "notify_email": email,
            "notify_delay_minutes": 60}  # fmt: skip
    tx_id = stack.trigger(admin, conf)["dag_run_id"]
    final = wait_status(admin, tx_id, terminal)
    assert final["state"] == "FAILED"
    mail = smtp.collector.wait_for(email, timeout=60)
    assert mail.subject == "Your export demo_orders failed"
    assert "params.status: &#x27;lost&#x27; is not allowed" in mail.body
    assert f"{tx_url(tx_id)}/logs" in mail.body
    status = wait_status(admin, tx_id, lambda s: s["notification"]["state"] == "sent")
    assert status["error"].startswith("invalid request: params.status: 'lost' is not allowed")


def test_pending_emails_never_hold_exports_back(clients: dict[str, httpx.Client], smtp: SmtpServer) -> None:
    """A week-long e-mail delay waits in the triggerer, in its own run: the export's run ends, and
    another export (of anyone) runs meanwhile."""
    analyst, bob, admin = clients["analyst"], clients["bob"], clients["admin"]
    waiting = _request(analyst, _address(), delay=7 * 24 * 60)
    assert wait_status(analyst, waiting, terminal)["state"] == "SUCCEEDED"
    run = notification_run_id(waiting)
    assert wait_task(admin, run, "wait_for_download_or_delay", {"deferred"}, timeout=60, dag_id=NOTIFY) == "deferred"
    assert _export_run(admin, waiting) == "success"
    other = _request(bob, _address(), delay=7 * 24 * 60, params={"status": "returned"})
    assert wait_status(bob, other, terminal, timeout=120)["state"] == "SUCCEEDED"
    assert analyst.get(tx_url(waiting)).json()["notification"]["state"] == "pending"


def test_the_email_is_sent_again_on_request(clients: dict[str, httpx.Client], smtp: SmtpServer) -> None:
    analyst, bob = clients["analyst"], clients["bob"]
    email = _address()
    tx_id = _request(analyst, email, delay=0)
    wait_status(analyst, tx_id, lambda s: s["notification"]["state"] == "sent")
    smtp.collector.wait_for(email, timeout=60)
    assert analyst.get(tx_url(tx_id) + "/download").status_code == 200  # a download does not stop a resend
    assert bob.post(tx_url(tx_id) + "/notify").status_code == 404  # only the owner (or an admin)
    answer = analyst.post(tx_url(tx_id) + "/notify")
    assert answer.status_code == 202, answer.text
    assert answer.json()["notification"]["state"] == "pending"
    deadline = time.monotonic() + 90
    while len(smtp.collector.to(email)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(smtp.collector.to(email)) == 2
    status = wait_status(analyst, tx_id, lambda s: s["notification"]["state"] == "sent")
    assert status["notification"]["sent_at"] is not None
    messages = [e["message"] for e in analyst.get(tx_url(tx_id) + "/logs").json()["events"]]
    assert "e-mail asked for again by analyst" in messages
    assert f"e-mail sent again, as asked to {email}" in messages
    unfinished = analyst.post(
        f"{API}/transactions", json={"definition": "demo_orders", "params": {}, "force": True}
    ).json()
    assert analyst.post(tx_url(unfinished["id"]) + "/notify").status_code == 409
