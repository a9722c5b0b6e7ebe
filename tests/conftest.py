"""Test session setup: an isolated Airflow home and header store, before Airflow is imported.

Layers: ``unit`` (pure functions), ``component`` (the header store and sources against real
SQLite and PostgreSQL), ``dag`` (whole runs with ``dag.test(logical_date=None)``) and ``e2e``
(a real Airflow stack, started once per session and shared).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="export-tx-tests-"))

# Airflow reads its configuration when first imported: set it before any test imports it.
os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "EXPORT_TX_STORE_URL": f"sqlite:///{_SESSION_DIR / 'store.db'}",
        "EXPORT_TX_STORAGE_URI": f"file://{_SESSION_DIR / 'exports'}",
        "EXPORT_TX_DEMO_DB": str(_SESSION_DIR / "demo_source.db"),
        "EXPORT_TX_RETRY_DELAY_SECONDS": "0.5",
        # The team's own definitions (YAML and Python) beside the shipped ones, in every test.
        "EXPORT_TX_DEFINITIONS_PATH": str(REPO / "tests" / "definitions"),
    }
)
os.environ.pop("EXPORT_TX_STORE_CONN_ID", None)

PG_ADMIN_DSN = os.environ.get("EXPORT_TX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEMO_ROWS = 20_000


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """Environment changes for a module's fixtures, undone after the module."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def demo_db(session_dir: Path) -> Path:
    from devtools.demo_data import generate_demo_sqlite

    path = Path(os.environ["EXPORT_TX_DEMO_DB"])
    generate_demo_sqlite(path, DEMO_ROWS)
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database on the machine's real PostgreSQL, dropped after the session."""
    from devtools.databases import fresh_database

    with fresh_database(PG_ADMIN_DSN, "export_tx_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_orders(pg_database: str) -> str:
    """The ``orders`` source table in PostgreSQL, reachable as Airflow connection export_source_pg."""
    from devtools.demo_data import generate_orders_pg

    generate_orders_pg(pg_database, 30_000, "orders")
    os.environ["AIRFLOW_CONN_EXPORT_SOURCE_PG"] = pg_database
    return pg_database


@pytest.fixture(scope="session")
def type_matrix(pg_orders: str) -> str:
    """The ``type_matrix`` table (every PostgreSQL type mapped) in the source database."""
    from tests.type_matrix_table import create_type_matrix

    create_type_matrix(pg_orders)
    return pg_orders


@pytest.fixture(scope="session")
def airflow_db(session_dir: Path) -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test()."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return home


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3-compatible server over HTTP on loopback (moto in server mode) with a bucket,
    reachable as the Airflow connection ``export_s3``."""
    import json

    import boto3
    from moto.server import ThreadedMotoServer

    from tests.smtp import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="exports")  # fmt: skip
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}  # fmt: skip
    os.environ["AIRFLOW_CONN_EXPORT_S3"] = json.dumps(conn)
    try:
        yield {"endpoint": endpoint, "bucket": "exports", "port": str(port), "conn_id": "export_s3"}
    finally:
        server.stop()
