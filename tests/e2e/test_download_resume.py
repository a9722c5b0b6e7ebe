"""Resumable downloads on the real stack: a download cut halfway resumes by itself, and a part
left by a client that dropped its connection is resumed by ``export-tx download``, each fetching
only the bytes still missing (seen by a counting proxy in front of the api-server), the file
as stored (Airflow's api-server compresses other answers) and its sha256 the status'."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.stack import AirflowStack
from tests.counting_proxy import CountingProxy, Exchange
from tests.e2e.conftest import terminal, tx_url, wait_status

pytestmark = pytest.mark.stack
CLI = str(Path(sys.executable).parent / "export-tx")


@pytest.fixture(scope="module")
def export(clients: dict[str, httpx.Client]) -> dict[str, Any]:
    """Every demo order as CSV (text: what the api-server's gzip would compress), SUCCEEDED."""
    analyst = clients["analyst"]
    answer = analyst.post("/exports/v1/transactions", json={"definition": "demo_orders", "params": {}, "format": "csv"})
    assert answer.status_code == 202, answer.text
    final = wait_status(analyst, answer.json()["id"], terminal)
    assert final["state"] == "SUCCEEDED", final
    assert final["result"]["bytes"] > 1_000_000
    return final


@pytest.fixture
def proxy(stack: AirflowStack) -> Iterator[CountingProxy]:
    p = CountingProxy(stack.port)
    try:
        yield p
    finally:
        p.close()


def _cli(stack: AirflowStack, proxy: CountingProxy, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXPORT_TX_URL": proxy.endpoint, "EXPORT_TX_USER": "analyst",
           "EXPORT_TX_PASSWORD": stack.passwords()["analyst"]}  # fmt: skip
    env.pop("EXPORT_TX_TOKEN", None)
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _downloads(proxy: CountingProxy) -> list[Exchange]:
    return proxy.matching(lambda e: e.path.endswith("/download"))


def test_a_download_cut_halfway_resumes_by_itself(
    stack: AirflowStack, export: dict[str, Any], proxy: CountingProxy, tmp_path: Path
) -> None:
    size, sha = export["result"]["bytes"], export["result"]["sha256"]
    half = size // 2
    proxy.cut_next(lambda e: e.path.endswith("/download") and "range" not in e.headers, half)
    target = tmp_path / "orders.csv"
    done = _cli(stack, proxy, "download", export["id"], "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv"]  # no part, no ETag file left
    first, second = _downloads(proxy)
    assert (first.status, first.headers.get("range"), first.body_bytes, first.cut) == (200, None, half, True)
    # The second try asks for the rest of this very file, and gets only that.
    assert (second.status, second.headers.get("range"), second.body_bytes) == (206, f"bytes={half}-", size - half)
    assert second.headers["if-range"] == f'"sha256-{sha}"'
    assert f"the download was cut at {half:,} bytes" in done.stderr


def test_a_part_left_by_a_dropped_client_is_resumed(
    stack: AirflowStack, export: dict[str, Any], proxy: CountingProxy, clients: dict[str, httpx.Client], tmp_path: Path
) -> None:
    size, sha = export["result"]["bytes"], export["result"]["sha256"]
    half = size // 2
    kept = b""
    # A client (accepting gzip, as httpx and browsers do) reads half the body and drops the connection.
    with clients["analyst"].stream("GET", tx_url(export["id"]) + "/download") as answer:
        assert answer.status_code == 200
        # As stored, not compressed by the api-server on the way: ranges count these bytes.
        assert answer.headers["content-encoding"] == "identity"
        assert answer.headers["content-length"] == str(size)
        etag = answer.headers["etag"]
        assert etag == f'"sha256-{sha}"'
        for chunk in answer.iter_raw():
            kept += chunk
            if len(kept) >= half:
                break
    target = tmp_path / "orders.csv"
    Path(f"{target}.part").write_bytes(kept[:half])
    Path(f"{target}.part.etag").write_text(etag + "\n")

    done = _cli(stack, proxy, "download", export["id"], "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    assert f"resuming {target}.part at {half:,} of {size:,} bytes" in done.stderr
    (only,) = _downloads(proxy)
    assert (only.status, only.headers.get("range"), only.body_bytes) == (206, f"bytes={half}-", size - half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv"]
