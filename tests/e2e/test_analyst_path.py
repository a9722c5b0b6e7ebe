"""The analyst's path in a real browser, typed key by key at a person's speed: the Exports page
in Airflow's navigation → the "New export" form (every parameter its own field, a live preview of
rows and batches) → a mistake refused on the form → the export followed to SUCCEEDED → found by
its label → its details → downloaded with the right sha256 → run again → a cancel that asks first.
A screenshot of each step is kept (``$EXPORT_TX_TEST_ARTIFACTS``, else the session folder)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.stack import AirflowStack
from tests.e2e.conftest import artifact, page_as, terminal, tx_url, wait_status

pytestmark = pytest.mark.stack

#: A person's typing speed: about 8 keys a second.
KEY_DELAY_MS = 120


@pytest.fixture
def analyst_page(browser: Any, stack: AirflowStack) -> Iterator[Any]:
    page = page_as(browser, stack, "analyst")
    try:
        yield page
    finally:
        page.context.close()


def _type(page: Any, selector: str, text: str) -> None:
    field = page.locator(selector)
    field.click()
    field.press("Control+a")
    field.press("Delete")
    field.press_sequentially(text, delay=KEY_DELAY_MS)


def test_from_the_form_to_a_verified_file(
    analyst_page: Any, stack: AirflowStack, clients: dict[str, httpx.Client], session_dir: Path, demo_db: Path
) -> None:
    page = analyst_page
    shot = 0

    def screenshot(step: str) -> None:
        nonlocal shot
        shot += 1
        page.screenshot(path=artifact(session_dir, f"analyst-{shot:02d}-{step}.png"), full_page=True)

    # Airflow's own UI: "Exports" is in the main navigation (not under Browse).
    page.goto("/plugin/exports")
    frame = page.frame_locator("iframe")
    frame.locator("#new-export").wait_for(state="visible", timeout=60_000)
    screenshot("exports-in-airflow-navigation")
    page.goto("/exports/ui")
    page.locator("#new-export").wait_for(state="visible", timeout=30_000)

    # Every parameter of the definition is its own field, with its description and limits.
    page.select_option("#f-definition", "demo_orders")
    assert page.locator("#f-definition-help").inner_text().startswith("Orders of the demo shop")
    assert page.locator("#p-status option").all_inner_texts()[:3] == ["(any)", "pending", "paid"]
    assert page.locator("#p-since").get_attribute("type") == "date"
    assert "Empty: automatic — one batch per batch slot" in page.locator("#new-export").inner_text()
    assert page.locator("#f-batch_size").get_attribute("placeholder") == "automatic"
    assert page.locator("#f-notify_delay_minutes").is_disabled()  # no e-mail, no delay to give

    # A mistake, typed: refused on the form, next to its field, before any run exists.
    def analysts() -> int:
        return int(clients["analyst"].get("/exports/v1/transactions", params={"limit": 1}).json()["total_entries"])

    before = analysts()
    _type(page, "#f-batch_size", "10")
    page.click("#f-submit")
    page.locator('.field-error[data-field="batch_size"]').filter(has_text="1,000 to 5,000,000").wait_for(timeout=15_000)
    assert analysts() == before
    # Half a number ("1e") on screen is not sent as "no value" (which would mean automatic).
    _type(page, "#f-batch_size", "1e")
    page.click("#f-submit")
    page.locator('.field-error[data-field="batch_size"]').filter(has_text="not a number as typed").wait_for(
        timeout=15_000
    )
    assert analysts() == before
    screenshot("mistake-refused")

    # The real request, typed key by key; the preview counts what will be exported.
    _type(page, "#f-label", "Paid orders since June")
    page.select_option("#p-status", "paid")
    page.locator("#p-since").fill("2025-06-01")
    _type(page, "#f-batch_size", "1000")
    import sqlite3

    with sqlite3.connect(demo_db) as conn:
        expected_rows = conn.execute(
            "SELECT count(*) FROM demo_orders WHERE created_at >= '2025-06-01' AND status = 'paid'"
        ).fetchone()[0]
    assert expected_rows > 0
    page.locator("#preview", has_text=f"Preview: {expected_rows:,} rows").wait_for(timeout=30_000)
    assert "batch" in page.locator("#preview").inner_text()
    screenshot("form-with-preview")
    page.click("#f-submit")
    page.locator("#form-message", has_text="requested: ").wait_for(timeout=30_000)
    token = page.locator("#form-message").inner_text().removeprefix("requested: ")
    status = clients["analyst"].get(tx_url(token)).json()
    # Nothing was sent that is not on screen.
    assert status["params"] == {"status": "paid", "since": "2025-06-01"}
    assert status["batch_size"] == 1000 and status["label"] == "Paid orders since June"
    assert status["notification"]["state"] == "not_requested"

    # Followed to SUCCEEDED on the page itself, which refreshes while the export runs.
    row = page.locator(f'tr[data-id="{token}"]')
    row.locator(".state", has_text="SUCCEEDED").wait_for(timeout=180_000)
    assert row.locator(".label").inner_text() == "Paid orders since June"
    screenshot("succeeded")

    # Found by its label; its details show the parameters, format, expiry and e-mail state.
    _type(page, "#q", "since june")
    page.wait_for_function("document.querySelectorAll('#transactions tbody tr[data-id]').length === 1", timeout=15_000)
    row.locator("button.details").click()
    facts = page.locator(f'tr[data-details="{token}"]')
    facts.locator("pre.log", has_text="SUCCEEDED").wait_for(timeout=15_000)
    shown = facts.locator('[data-fact="Parameters"]').inner_text()
    assert sorted(shown.split(", ")) == ["since: 2025-06-01", "status: paid"]
    assert facts.locator('[data-fact="Format"]').inner_text() == "parquet"
    assert facts.locator('[data-fact="E-mail"]').inner_text() == "not_requested"
    assert facts.locator('[data-fact="Expires"]').inner_text() != "—"
    screenshot("details")

    # Downloaded from the page: the bytes are the file the status describes.
    with page.expect_download() as download_info:
        row.locator("a.download").click()
    saved = download_info.value.path()
    final = wait_status(clients["analyst"], token, terminal)
    assert hashlib.sha256(Path(saved).read_bytes()).hexdigest() == final["result"]["sha256"]
    assert final["result"]["rows"] == expected_rows

    # "Run again" fills the form with the same request.
    row.locator("button.again").click()
    assert page.locator("#p-status").input_value() == "paid"
    assert page.locator("#p-since").input_value() == "2025-06-01"
    assert page.locator("#f-label").input_value() == "Paid orders since June"
    screenshot("run-again")


def test_cancel_asks_first(analyst_page: Any, clients: dict[str, httpx.Client], session_dir: Path) -> None:
    page = analyst_page
    running = (
        clients["analyst"]
        .post(
            "/exports/v1/transactions",
            json={"definition": "demo_orders", "batch_size": 1000, "label": "to cancel", "force": True},
        )
        .json()
    )
    page.goto("/exports/ui")
    button = page.locator(f'tr[data-id="{running["id"]}"] button.cancel')
    button.wait_for(timeout=30_000)
    questions: list[str] = []

    # First "no": nothing happens.
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    button.click()
    page.wait_for_timeout(500)
    assert clients["analyst"].get(tx_url(running["id"])).json()["state"] in ("REQUESTED", "RUNNING", "MERGING")
    # Then "yes": cancelled.
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    button.click()
    status = wait_status(clients["analyst"], running["id"], terminal)
    assert status["state"] == "CANCELLED"
    assert questions[0].startswith("Cancel export to cancel (demo_orders, ")
    page.locator(f'tr[data-id="{running["id"]}"] .state', has_text="CANCELLED").wait_for(timeout=30_000)
    page.screenshot(path=artifact(session_dir, "analyst-cancelled.png"), full_page=True)


def test_cancel_keeping_the_finished_batches(
    analyst_page: Any, clients: dict[str, httpx.Client], session_dir: Path, demo_db: Path
) -> None:
    """Once batches have finished, the row offers "Cancel, keep finished": the export ends CANCELLED
    with a partial file — offered as "Download partial" — holding exactly the source's rows in the
    finished batches' key ranges."""
    import io
    import sqlite3

    import pyarrow.parquet as pq

    page, analyst = analyst_page, clients["analyst"]
    running = analyst.post("/exports/v1/transactions", json={"definition": "demo_orders", "batch_size": 1000,
                                                            "label": "keep some", "force": True}).json()  # fmt: skip
    page.goto("/exports/ui")
    # The button appears with the first finished batch (the page refreshes while something runs).
    button = page.locator(f'tr[data-id="{running["id"]}"] button.cancel-keep')
    button.wait_for(timeout=30_000)
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    button.click()
    # The cancel's own answer carries the partial file; a poller sees CANCELLED a moment before it.
    status = wait_status(analyst, running["id"], lambda s: terminal(s) and (s["result"] or s["state"] != "CANCELLED"))
    assert status["state"] == "CANCELLED" and "kept as a partial file" in questions[0]
    result = status["result"]
    log = [e["message"] for e in analyst.get(tx_url(running["id"]) + "/logs").json()["events"]]
    assert result is not None, log
    assert result["partial"] is True and 1 <= len(result["ranges"]) < 20
    link = page.locator(f'tr[data-id="{running["id"]}"] a.download', has_text="Download partial")
    link.wait_for(timeout=30_000)
    page.screenshot(path=artifact(session_dir, "analyst-cancelled-partial.png"), full_page=True)
    answer = analyst.get(link.get_attribute("href") or "")
    assert answer.status_code == 200 and hashlib.sha256(answer.content).hexdigest() == result["sha256"]
    assert "-partial.parquet" in answer.headers["content-disposition"]
    keys = pq.read_table(io.BytesIO(answer.content)).column("order_id").to_pylist()

    def kept(key: int) -> bool:
        return any(r["from"] <= key and (r["below"] is None or key < r["below"]) for r in result["ranges"])

    with sqlite3.connect(demo_db) as conn:
        expected = [k for (k,) in conn.execute("SELECT order_id FROM demo_orders ORDER BY order_id") if kept(k)]
    assert keys == expected and len(keys) == result["rows"] == sum(r["rows"] for r in result["ranges"])


def test_a_run_page_in_airflow_shows_its_export(
    browser: Any,
    stack: AirflowStack,
    clients: dict[str, httpx.Client],
    session_dir: Path,
) -> None:
    """The tab the plugin adds to every run's page: the export of that run (or a plain line)."""
    plugins = clients["admin"].get("/api/v2/plugins").json()["plugins"]
    views = next(p for p in plugins if p["name"] == "export_transactions")["external_views"]
    tab = next(v for v in views if v["destination"] == "dag_run")
    assert tab["href"] == "/exports/ui?run={RUN_ID}&dag={DAG_ID}"
    nav = next(v for v in views if v["destination"] == "nav")
    assert nav.get("category") in (None, "")  # the main navigation, not under Browse

    tx = (
        clients["admin"]
        .post("/exports/v1/transactions", json={"definition": "demo_orders", "label": "run tab", "force": True})
        .json()
    )
    wait_status(clients["admin"], tx["id"], terminal)
    page = page_as(browser, stack, "admin")
    try:
        from urllib.parse import quote

        page.goto(f"/exports/ui?run={quote(tx['id'], safe='')}&dag=export_transaction")
        page.locator(f'tr[data-details="{tx["id"]}"]').wait_for(timeout=30_000)
        assert page.locator(f'tr[data-id="{tx["id"]}"] .state').inner_text() == "SUCCEEDED"
        assert page.locator("#new-export").is_hidden()
        page.goto("/exports/ui?run=scheduled__2026-01-01T00%3A00%3A00&dag=some_other_dag")
        page.locator("#run-view", has_text="is not an export you may see").wait_for(timeout=30_000)
        page.screenshot(path=artifact(session_dir, "run-tab-not-an-export.png"))
    finally:
        page.context.close()
