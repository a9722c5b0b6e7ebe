"""The Exports page inside the Airflow UI, in a real headless Chromium (Playwright)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.stack import AirflowStack
from export_tx import cli
from tests.e2e.conftest import artifact, held_slots, page_as, terminal, tx_url, wait_status

pytestmark = pytest.mark.stack


def test_exports_page_lists_transactions_and_live_progress(
    browser: Any, stack: AirflowStack, clients: dict[str, httpx.Client], session_dir: Path
) -> None:
    analyst = clients["analyst"]
    finished = analyst.post("/exports/v1/transactions",
                            json={"definition": "demo_orders", "params": {"status": "returned"},
                                  "force": True}).json()  # fmt: skip
    wait_status(analyst, finished["id"], terminal)
    running = analyst.post("/exports/v1/transactions",
                           json={"definition": "demo_orders", "params": {}, "batch_size": 1000,
                                 "force": True}).json()  # fmt: skip

    page = page_as(browser, stack, "analyst")
    page.goto("/exports/ui")
    row = page.locator(f'tr[data-id="{running["id"]}"]')
    row.wait_for(timeout=30_000)
    # The page refreshes itself while something runs: wait until it shows batches progressing.
    row.locator(".pct").filter(has_text="batches").wait_for(timeout=60_000)
    progress_text = row.locator(".pct").inner_text()
    assert "/20 batches" in progress_text
    # And when it should be done: under its state while it runs (from earlier exports, then its own batches).
    row.locator(".standing.eta").filter(has_text=re.compile(r"^(about .+ left \(ETA .+\)|any moment now)$")).wait_for(
        timeout=60_000)  # fmt: skip
    assert row.locator(".state").inner_text() in ("RUNNING", "MERGING")
    assert row.locator("button.cancel").count() == 1
    page.screenshot(path=artifact(session_dir, "exports-running.png"))

    done_row = page.locator(f'tr[data-id="{finished["id"]}"]')
    assert done_row.locator(".state").inner_text() == "SUCCEEDED"
    assert done_row.locator("a.download").get_attribute("href") == finished["links"]["download"]
    assert "1,000" in done_row.inner_text()  # rows

    # It ends by itself: the page keeps refreshing until the export succeeded.
    row.locator(".state", has_text="SUCCEEDED").wait_for(timeout=120_000)
    assert row.locator(".pct").inner_text().startswith("100%")
    assert row.locator("button.cancel").count() == 0
    page.context.close()


def test_a_waiting_export_shows_its_place_in_the_line(
    browser: Any, stack: AirflowStack, clients: dict[str, httpx.Client], session_dir: Path
) -> None:
    analyst = clients["analyst"]
    body = {"definition": "demo_orders", "params": {"status": "pending"}, "force": True}  # two exports
    with held_slots(clients["admin"]):  # the deployment is full: both wait
        ids = [analyst.post("/exports/v1/transactions", json=body).json()["id"] for _ in range(2)]
        page = page_as(browser, stack, "analyst")
        page.goto("/exports/ui")
        for tx in ids:
            queue = analyst.get(tx_url(tx)).json()["queue"]
            row = page.locator(f'tr[data-id="{tx}"]')
            row.locator(".standing.queue", has_text=f"queued: {cli.queue_text(queue)}").wait_for(timeout=30_000)
            assert row.locator(".pct").inner_text() == "0% (queued)"
        row.locator("button.details").click()
        # The click re-reads the list; on a loaded machine that takes a while (the page's own status
        # line says when it last loaded, or why it could not).
        fact = page.locator(f'tr[data-details="{ids[1]}"] dd[data-fact="Place in queue"]')
        try:
            row.locator("button.details", has_text="Hide").wait_for(timeout=30_000)
            fact.wait_for(timeout=30_000)
        except Exception as exc:
            raise AssertionError(f"no place in queue; the page says: {page.locator('#status').inner_text()}") from exc
        assert fact.inner_text().startswith(cli.queue_text(queue) + " to start")
        page.screenshot(path=artifact(session_dir, "exports-queued.png"))
        for tx in ids:  # not needed any more: cancelled while still waiting
            assert analyst.post(tx_url(tx) + "/cancel").status_code == 202
    row.locator(".state", has_text="CANCELLED").wait_for(timeout=30_000)
    assert row.locator(".standing").count() == 0
    page.context.close()


def test_viewer_sees_no_cancel_button_and_only_own_rows(
    browser: Any, stack: AirflowStack, clients: dict[str, httpx.Client]
) -> None:
    page = page_as(browser, stack, "viewer")
    page.goto("/exports/ui")
    page.locator("#status", has_text="transaction(s)").wait_for(timeout=30_000)
    assert page.locator("tbody tr").count() == 0  # the viewer requested nothing
    assert page.locator("button.cancel").count() == 0
    page.context.close()


def test_the_page_is_in_the_airflow_navigation(clients: dict[str, httpx.Client]) -> None:
    plugins = clients["viewer"].get("/api/v2/plugins").json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "export_transactions")
    assert ours["external_views"][0]["href"] == "/exports/ui"
    assert ours["fastapi_apps"][0]["url_prefix"] == "/exports"
    assert ours["listeners"] == ["export_tx.airflow.listeners"]


def test_the_page_opens_inside_the_airflow_ui(browser: Any, stack: AirflowStack, session_dir: Path) -> None:
    """Airflow's own React UI shows the plugin view (an iframe of /exports/ui) at /plugin/exports."""
    page = page_as(browser, stack, "admin")
    page.goto("/plugin/exports")
    frame = page.frame_locator("iframe")
    frame.locator("#status", has_text="transaction(s)").wait_for(timeout=60_000)
    assert frame.locator("h1").inner_text() == "Exports"
    assert frame.locator("tbody tr").count() >= 1  # the admin sees everyone's
    page.screenshot(path=artifact(session_dir, "exports-in-airflow-ui.png"), full_page=True)
    page.context.close()


def test_an_analyst_requests_an_export_from_the_form(
    browser: Any, stack: AirflowStack, clients: dict[str, httpx.Client], session_dir: Path
) -> None:
    """The analysts' door to new exports: a form generated from the definition's parameter schema
    (Airflow's own trigger form is the platform team's)."""

    def bobs() -> int:
        return int(clients["bob"].get("/exports/v1/transactions", params={"limit": 1}).json()["total_entries"])

    before = bobs()
    page = page_as(browser, stack, "bob")
    page.goto("/exports/ui")
    form = page.locator("#new-export")
    form.wait_for(state="visible", timeout=30_000)
    page.select_option("#f-definition", "demo_orders")
    # The definition's parameters, typed by their schema: an enum is a drop-down, a date a date input.
    assert page.locator("#p-status option").all_inner_texts()[:3] == ["(any)", "pending", "paid"]
    assert page.locator("#p-since").get_attribute("type") == "date"
    assert page.locator("#f-retention_days").get_attribute("max") == "30"
    # A mistake is named next to its field, and nothing is requested.
    page.fill("#f-batch_size", "10")
    page.click("#f-submit")
    error = page.locator('.field-error[data-field="batch_size"]')
    error.filter(has_text="allowed: 1,000 to 5,000,000").wait_for(timeout=10_000)
    assert bobs() == before
    # Typed at a person's speed, the value sent is the value typed.
    page.fill("#f-batch_size", "")
    page.locator("#f-batch_size").press_sequentially("1000", delay=80)
    page.select_option("#p-status", "paid")
    page.locator("#p-since").fill("2025-06-01")
    page.click("#f-submit")
    page.locator("#form-message", has_text="requested: ").wait_for(timeout=30_000)
    token = page.locator("#form-message").inner_text().removeprefix("requested: ")
    status = wait_status(clients["bob"], token, terminal)
    assert status["state"] == "SUCCEEDED" and status["requested_by"] == "bob"
    assert status["params"] == {"status": "paid", "since": "2025-06-01"} and status["batch_size"] == 1000
    page.locator(f'tr[data-id="{token}"] .state', has_text="SUCCEEDED").wait_for(timeout=60_000)
    page.screenshot(path=artifact(session_dir, "exports-new-export.png"), full_page=True)
    # The same request again: the page names the export bob already has, and starts nothing …
    made = bobs()
    page.click("#f-submit")
    page.locator("#form-message", has_text="you already have").or_(
        page.locator("#form-message", has_text="requested: ")).wait_for(timeout=30_000)  # fmt: skip
    assert "you already have" in page.locator("#form-message").inner_text(), page.locator("#form-message").inner_text()
    page.locator("#form-message", has_text=f"you already have this export: {token} (SUCCEEDED)").wait_for(
        timeout=30_000)  # fmt: skip
    assert bobs() == made
    page.screenshot(path=artifact(session_dir, "exports-duplicate.png"), full_page=True)
    # … until asked to anyway.
    page.click("#f-force")
    page.locator("#form-message", has_text="requested: ").wait_for(timeout=30_000)
    again = page.locator("#form-message").inner_text().removeprefix("requested: ")
    assert again != token and bobs() == made + 1
    assert wait_status(clients["bob"], again, terminal)["state"] == "SUCCEEDED"
    page.context.close()


def test_a_viewer_gets_no_form(browser: Any, stack: AirflowStack) -> None:
    page = page_as(browser, stack, "viewer")
    page.goto("/exports/ui")
    page.locator("#status", has_text="transaction(s)").wait_for(timeout=30_000)
    assert page.locator("#new-export").is_hidden()
    page.context.close()
