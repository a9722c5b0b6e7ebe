"""Fixtures the component tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_tx.store import HeaderStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> HeaderStore:
    """A fresh header store on the embedded SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        dsn: str = request.getfixturevalue("pg_database")
        url = "postgresql+psycopg://" + dsn.split("://", 1)[1]
    s = HeaderStore(url)
    s.ensure_schema()
    s.ensure_schema()  # idempotent
    return s
