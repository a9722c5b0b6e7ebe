"""Who may do what, through every door: each /exports route and each Airflow REST call on export
runs × {anonymous, viewer, analyst who owns the export, analyst who does not, admin} → the answer
the README's "Who may do what" documents.

The export DAGs (transactions, their e-mails, bulk exports, housekeeping) are the platform team's
(admin, op): analysts and viewers never see or touch runs — other people's parameters, e-mail
addresses, results — through Airflow's API or UI; they use /exports, which shows each their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from devtools.stack import AirflowStack
from tests.e2e.conftest import terminal, tx_url, wait_status

pytestmark = pytest.mark.stack
WHO = ("anonymous", "viewer", "owner", "other", "admin")
USERS = {"viewer": "viewer", "owner": "analyst", "other": "bob", "admin": "admin"}


@pytest.fixture(scope="module")
def owned(clients: dict[str, httpx.Client]) -> str:
    """A finished export of the analyst's."""
    answer = clients["analyst"].post("/exports/v1/transactions",
                                     json={"definition": "demo_orders", "params": {"status": "returned"},
                                           "force": True})  # fmt: skip
    assert answer.status_code == 202
    tx = str(answer.json()["id"])
    assert wait_status(clients["analyst"], tx, terminal)["state"] == "SUCCEEDED"
    return tx


@pytest.fixture(scope="module")
def callers(stack: AirflowStack, clients: dict[str, httpx.Client]) -> Iterator[dict[str, httpx.Client]]:
    anonymous = httpx.Client(base_url=stack.base_url, timeout=60)
    try:
        yield {"anonymous": anonymous, **{who: clients[user] for who, user in USERS.items()}}
    finally:
        anonymous.close()


def _ask(client: httpx.Client, method: str, path: str, body: Any = None) -> int:
    return client.request(method, path, json=body).status_code


# (method, path template, body, expected answer by caller)
EXPORTS_ROUTES: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/exports/v1/definitions", None, dict(anonymous=401, viewer=200, owner=200, other=200, admin=200)),
    ("GET", "/exports/v1/definitions/demo_orders/preview?rows=1", None,
     dict(anonymous=401, viewer=403, owner=200, other=200, admin=200)),
    # An invalid body: authorised callers get to validation (422) and nothing is created.
    ("POST", "/exports/v1/transactions", {"definition": "demo_orders", "batch_size": 1},
     dict(anonymous=401, viewer=403, owner=422, other=422, admin=422)),
    ("GET", "/exports/v1/transactions", None, dict(anonymous=401, viewer=200, owner=200, other=200, admin=200)),
    ("GET", "{tx}", None, dict(anonymous=401, viewer=404, owner=200, other=404, admin=200)),
    ("GET", "{tx}/logs", None, dict(anonymous=401, viewer=404, owner=200, other=404, admin=200)),
    ("GET", "{tx}/download", None, dict(anonymous=401, viewer=404, owner=200, other=404, admin=200)),
    ("POST", "{tx}/cancel", None, dict(anonymous=401, viewer=403, owner=409, other=404, admin=409)),
    ("POST", "{tx}/notify", None, dict(anonymous=401, viewer=403, owner=409, other=404, admin=409)),
    ("GET", "/exports/v1/me", None, dict(anonymous=401, viewer=200, owner=200, other=200, admin=200)),
    ("GET", "/exports/ui", None, dict(anonymous=401, viewer=200, owner=200, other=200, admin=200)),
]  # fmt: skip
PLATFORM_ONLY = dict(anonymous=401, viewer=403, owner=403, other=403, admin=200)
RUN = "/api/v2/dags/export_transaction/dagRuns/{run}"
AIRFLOW_CALLS: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/api/v2/dags/export_transaction", None, PLATFORM_ONLY),
    ("GET", "/api/v2/dags/export_transaction/dagRuns", None, PLATFORM_ONLY),
    ("GET", RUN, None, PLATFORM_ONLY),  # its conf: parameters and e-mail addresses
    ("GET", RUN + "/taskInstances", None, PLATFORM_ONLY),
    ("GET", RUN + "/taskInstances/merge_parts/logs/1", None, PLATFORM_ONLY),
    ("GET", RUN + "/taskInstances/merge_parts/xcomEntries", None, PLATFORM_ONLY),
    ("PATCH", RUN + "?update_mask=note", {"note": "looked at"}, PLATFORM_ONLY),
    ("POST", RUN + "/clear", {"dry_run": True}, PLATFORM_ONLY),
    ("POST", "/api/v2/dags/export_transaction/dagRuns", {"logical_date": None, "conf": {"definition": 5}},
     dict(anonymous=401, viewer=403, owner=403, other=403, admin=400)),
    ("DELETE", "/api/v2/dags/export_transaction/dagRuns/no-such-run", None,
     dict(anonymous=401, viewer=403, owner=403, other=403, admin=404)),
    ("GET", "/api/v2/dags/export_notification/dagRuns", None, PLATFORM_ONLY),
    ("GET", "/api/v2/dags/export_housekeeping", None, PLATFORM_ONLY),
    ("GET", "/api/v2/dags/bulk_export__e2e_once/dagRuns", None, PLATFORM_ONLY),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "expected"), EXPORTS_ROUTES + AIRFLOW_CALLS)
def test_every_door(callers: dict[str, httpx.Client], owned: str, method: str, path: str, body: Any,
                    expected: dict[str, int]) -> None:  # fmt: skip
    url = path.replace("{tx}", tx_url(owned)).replace("{run}", quote(owned, safe=""))
    answers = {who: _ask(callers[who], method, url, body) for who in WHO}
    assert answers == expected


def test_airflow_lists_export_dags_and_runs_to_the_platform_team_only(
    callers: dict[str, httpx.Client], owned: str
) -> None:
    ours = {"export_transaction", "export_notification", "export_housekeeping"}
    for who in ("viewer", "owner", "other", "admin"):
        dags = {d["dag_id"] for d in callers[who].get("/api/v2/dags", params={"limit": 100}).json()["dags"]}
        runs = callers[who].get("/api/v2/dags/~/dagRuns", params={"limit": 100}).json()["dag_runs"]
        logs = callers[who].get("/api/v2/eventLogs", params={"limit": 100}).json()["event_logs"]
        seen = {r["dag_id"] for r in runs} | {e["dag_id"] for e in logs if e.get("dag_id")}
        if who == "admin":
            assert ours <= dags and "export_transaction" in seen
        else:
            assert not (dags & ours) and not any(d.startswith("bulk_export__") for d in dags), (who, dags)
            assert not any(d in ours or d.startswith("bulk_export__") for d in seen), (who, seen)


def test_each_person_sees_only_their_own_in_exports(callers: dict[str, httpx.Client], owned: str) -> None:
    listed = {who: {t["id"] for t in callers[who].get("/exports/v1/transactions", params={"limit": 100}).json()[
        "transactions"]} for who in ("viewer", "owner", "other", "admin")}  # fmt: skip
    assert owned in listed["owner"] and owned in listed["admin"]
    assert owned not in listed["other"] and owned not in listed["viewer"]


def test_a_logged_out_token_opens_no_door_of_exports(
    stack: AirflowStack, callers: dict[str, httpx.Client], owned: str
) -> None:
    """Airflow's logout revokes the token: every /exports route then answers Airflow's 403 —
    a read, a refused parameter, a mutation (which changes nothing), a page — while the owner's
    other token still reads the export."""
    token = stack.token("analyst")
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        assert client.get(tx_url(owned)).json()["id"] == owned
        assert client.get("/api/v2/auth/logout", follow_redirects=False).status_code in (302, 303, 307)
        before = callers["owner"].get(tx_url(owned)).json()
        for method, path in [("GET", tx_url(owned)), ("GET", "/exports/v1/transactions?limit=0"),
                             ("POST", f"{tx_url(owned)}/notify"), ("GET", f"{tx_url(owned)}/download"),
                             ("GET", "/exports/v1/definitions/demo_orders/preview?rows=1"),
                             ("GET", "/exports/ui")]:  # fmt: skip
            answer = client.request(method, path, follow_redirects=False)
            assert (answer.status_code, answer.json()["detail"]) == (403, "Invalid JWT token"), (method, path)
    after = callers["owner"].get(tx_url(owned)).json()
    assert after["state"] == before["state"] and after.get("notification") == before.get("notification")
