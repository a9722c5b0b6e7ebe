from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from export_tx.devstack import AirflowStack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def stack(session_dir: Path, demo_db: Path) -> Iterator[AirflowStack]:
    """One real Airflow stack (api-server, scheduler, dag-processor, triggerer) for the session."""
    s = AirflowStack(session_dir / "stack", port=_free_port())
    s.migrate()
    s.start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
