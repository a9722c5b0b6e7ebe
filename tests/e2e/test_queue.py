"""Where am I in the queue, and when will it be ready — on the real Airflow stack.

A line forms the way it does in production: the deployment is full. The default pool's slots go
to 0 (:func:`held_slots`), so requested exports get their Airflow runs but no task starts; then one
slot at a time lets them start, and the rest move up. The shared stack is held for a few seconds
only, and given back its slots however the test ends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import held_slots, terminal, tx_url, wait_status
from tests.helpers import store

pytestmark = pytest.mark.stack
API = "/exports/v1"
SMALL = {"definition": "demo_orders", "params": {"status": "paid"}}  # one batch
SLOW = {"definition": "demo_orders", "params": {}, "batch_size": 1000}  # 20,000 rows: 20 batches


def _request(client: httpx.Client, body: dict[str, Any]) -> str:
    answer = client.post(f"{API}/transactions", json={**body, "force": True})  # each a new export
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _line(admin: httpx.Client) -> list[dict[str, Any]]:
    """Everyone's REQUESTED exports as the admin's list shows them (one statement counts the places)."""
    answer = admin.get(f"{API}/transactions", params={"state": "REQUESTED", "limit": 100})
    answer.raise_for_status()
    return list(answer.json()["transactions"])


def _snapshot(admin: httpx.Client) -> list[dict[str, Any]] | None:
    """The line, if nobody left it while it was read (the list reads the headers, then counts)."""
    first, again = _line(admin), _line(admin)
    return first if {t["id"] for t in first} == {t["id"] for t in again} else None


def _check_line(line: list[dict[str, Any]]) -> dict[str, int]:
    """Every waiting export, whoever's, has a place: 1..n in the order of requests."""
    ordered = sorted(line, key=lambda t: (datetime.fromisoformat(t["created_at"]), t["id"]))
    assert [t["queue"] for t in ordered] == [
        {"position": i, "ahead": i - 1, "waiting": len(line)} for i in range(1, len(line) + 1)
    ], ordered
    return {t["id"]: t["queue"]["position"] for t in line}


def test_exports_wait_in_line_move_up_and_a_running_one_says_when_it_ends(clients: dict[str, httpx.Client]) -> None:
    analyst, bob, admin = clients["analyst"], clients["bob"], clients["admin"]
    with held_slots(admin) as open_slots:
        a = _request(analyst, SMALL)
        b = _request(bob, SMALL)
        c = _request(analyst, SLOW)
        owner = {a: analyst, b: bob, c: analyst}
        mine = [a, b, c]  # in the order they were requested

        line = _snapshot(admin)
        assert line is not None
        places = _check_line(line)
        assert places[b] == places[a] + 1 and places[c] == places[b] + 1
        for tx in mine:  # each owner's status says the same
            status = owner[tx].get(tx_url(tx)).json()
            assert status["state"] == "REQUESTED" and status["eta"] is None
            assert status["queue"] == {"position": places[tx], "ahead": places[tx] - 1, "waiting": len(line)}
        # Bob sees his place among ana's exports: counted, never shown.
        assert [t["id"] for t in bob.get(f"{API}/transactions", params={"state": "REQUESTED"}).json()
                ["transactions"]] == [b]  # fmt: skip
        listed = {t["id"]: t["queue"] for t in analyst.get(f"{API}/transactions", params={"limit": 100}).json()
                  ["transactions"] if t["id"] in (a, c)}  # fmt: skip
        assert listed == {tx: {"position": places[tx], "ahead": places[tx] - 1, "waiting": len(line)} for tx in (a, c)}

        # One slot: they start one after another, and whoever is behind moves up.
        open_slots(1)
        seen: dict[str, list[int]] = {tx: [places[tx]] for tx in mine}
        left: list[str] = []
        deadline = time.monotonic() + 120
        while len(left) < len(mine):
            assert time.monotonic() < deadline, f"still waiting: {set(mine) - set(left)}"
            line = _snapshot(admin)
            if line is None:
                continue
            places = _check_line(line)
            for tx in mine:
                if tx in places:
                    assert places[tx] <= seen[tx][-1], f"{tx} moved back: {seen[tx]} then {places[tx]}"
                    seen[tx].append(places[tx])
                elif tx not in left:
                    left.append(tx)
            time.sleep(0.2)
    # Someone behind moved up, unless they started exactly from the back of the line (Airflow gives
    # executor slots by priority, not strictly in the order of requests).
    moved_up = [tx for tx in mine if seen[tx][-1] < seen[tx][0]]
    assert moved_up or left == mine[::-1], (seen, left)
    for tx in mine:
        assert owner[tx].get(tx_url(tx)).json()["queue"] is None  # out of the line

    # The slow one: no estimate while planning; once a batch is done, one from this run's throughput.
    estimates: list[tuple[datetime, dict[str, Any], Any]] = []
    while len([e for e in estimates if e[1]["eta"] and e[1]["eta"]["basis"] == "this_run"]) < 3:
        asked = datetime.now(UTC)
        status = analyst.get(tx_url(c)).json()
        if terminal(status) or status["state"] == "MERGING":
            break
        if status["state"] == "RUNNING":
            estimates.append((asked, status, store().get(c)))
        time.sleep(0.2)
    this_run = 0
    for asked, status, header in estimates:
        p, eta = status["progress"], status["eta"]
        if p["batches_total"] is None:
            assert eta is None  # planning: no row count yet
            continue
        assert header.rows_planned == 20_000
        if p["batches_done"] == 0:
            assert eta is None or eta["basis"] == "history"  # demo_orders exports succeeded before
        else:
            assert eta is not None and eta["basis"] == "this_run", status
        if eta is None:
            continue
        assert eta["rows_left"] == 20_000 - p["rows_written"]
        finish = datetime.fromisoformat(eta["estimated_finish_at"])
        assert finish >= asked - timedelta(seconds=1)  # never in the past
        assert eta["seconds_left"] <= eta["rows_left"] / eta["rows_per_second"] + 1
        if eta["basis"] != "this_run" or header.rows_written != p["rows_written"]:
            continue  # the header read after this answer has moved on
        this_run += 1
        first, last = header.batches_started_at, header.last_batch_at
        rate = p["rows_written"] / max((last - first).total_seconds(), 0.1)
        projected = last + timedelta(seconds=eta["rows_left"] / rate)
        if projected >= asked:  # not overtaken: this run's throughput, projected from the latest batch end
            assert eta["rows_per_second"] == pytest.approx(rate, rel=0.01, abs=0.1)
            assert abs((finish - projected).total_seconds()) < 1
    assert this_run >= 1, estimates

    assert analyst.post(tx_url(c) + "/cancel").status_code in (202, 409)  # done with it: no need to wait
    for tx in (a, b, c):
        final = wait_status(owner[tx], tx, terminal)
        assert final["queue"] is None and final["eta"] is None
