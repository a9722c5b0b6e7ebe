"""A private MariaDB server for tests: its own datadir in a temporary folder, its own socket and a
free port on loopback, started once per session and stopped after it.

The machine may also run a system MariaDB on 3306; this server never uses or touches it
(``--no-defaults``: no system option file, no shared socket, no shared datadir).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = (
    "the MariaDB tests need MariaDB's server binaries (mariadbd, mariadb-install-db): apt-get install mariadb-server"
)
DATABASE = "export_src"
USER = "exporter"
PASSWORD = "exp'orter\"pw"  # quotes on purpose: credentials are passed, never formatted


@dataclass(frozen=True)
class MariaDB:
    host: str
    port: int
    socket: str
    database: str
    user: str
    password: str

    def connect(self, **kwargs: Any) -> Any:
        """A mysql-connector-python connection as the test user (the tests' own reads)."""
        import mysql.connector

        return mysql.connector.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                       database=self.database, use_pure=True, **kwargs)  # fmt: skip

    def airflow_conn(self, client: str | None = None) -> str:
        """The server as an Airflow connection (JSON, for an ``AIRFLOW_CONN_<ID>`` variable)."""
        extra = {"client": client} if client else {}
        return json.dumps({"conn_type": "mysql", "host": self.host, "port": self.port, "login": self.user,
                           "password": self.password, "schema": self.database, "extra": extra})  # fmt: skip


def _binary(name: str, *places: str) -> str:
    found = shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(f"{name} not found; {INSTALL_HINT}", pytrace=False)
    return found


def _free_port() -> int:
    from tests.smtp import free_port

    return free_port()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A running MariaDB with a database and a user that may read and write it."""
    mariadbd = _binary("mariadbd", "/usr/sbin/mariadbd")
    install_db = _binary("mariadb-install-db", "/usr/bin/mariadb-install-db")
    root = Path(tempfile.mkdtemp(prefix="export-tx-mariadb-"))
    datadir, sock, port = root / "data", str(root / "mysqld.sock"), _free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    init = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
         "--skip-test-db", *user],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"mariadb-install-db failed: {init.stderr[-2000:]}", pytrace=False)
    log = open(root / "server.log", "wb")  # kept open for the server's lifetime
    server = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-networking=0", f"--pid-file={root / 'mysqld.pid'}",
         "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--character-set-server=utf8mb4",
         "--collation-server=utf8mb4_unicode_ci", *user],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        admin = _wait_for_root(sock, server, root)
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY %s", (PASSWORD,))
            cur.execute(f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{USER}'@'127.0.0.1'")
        admin.close()
        yield MariaDB("127.0.0.1", port, sock, DATABASE, USER, PASSWORD)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_root(sock: str, server: subprocess.Popen[bytes], root: Path) -> Any:
    import mysql.connector

    deadline = time.monotonic() + 120
    while True:
        if server.poll() is not None:
            pytest.fail(f"mariadbd exited at start-up: {(root / 'server.log').read_text()[-2000:]}", pytrace=False)
        try:
            return mysql.connector.connect(unix_socket=sock, user="root", password="", use_pure=True, autocommit=True,
                                           connection_timeout=5)  # fmt: skip
        except mysql.connector.Error:
            if time.monotonic() > deadline:
                pytest.fail("mariadbd did not answer within 120 s", pytrace=False)
            time.sleep(0.3)
