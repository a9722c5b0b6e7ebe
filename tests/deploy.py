"""Pieces of a real deployment for the tests that need more than the shared stack: a fresh
PostgreSQL database with the ``orders`` source and its facts computed by PostgreSQL itself, an
S3-compatible server (moto over HTTP) and what a test needs to check the files in it, a private
PostgreSQL cluster a test may stop and start, and a proxy in front of S3 that holds or cuts
requests at the moment a test chooses."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import PG_ADMIN_DSN
from tests.smtp import free_port

# -- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL (dropped afterwards); yields its DSN."""
    from devtools.databases import fresh_database as on_server

    with on_server(PG_ADMIN_DSN, prefix) as dsn:
        yield dsn


#: Every row of the export as the product must write it (e-mail masked), as one text per row,
#: computed by PostgreSQL itself — independent of the product's ADBC/Arrow path.
SOURCE_FACTS_SQL = r"""
SELECT count(*), count(DISTINCT order_id), sum(order_id), sum(amount),
       md5(string_agg(concat_ws('|', order_id, customer_id,
                                regexp_replace(customer_email, '^([^@])[^@]*@', '\1***@'),
                                status, amount, currency, quantity, product_sku, country,
                                extract(epoch FROM created_at)::bigint, extract(epoch FROM updated_at)::bigint,
                                coalesce(note, '<null>')),
                      E'\n' ORDER BY order_id))
FROM orders
"""


@dataclass(frozen=True)
class SourceFacts:
    rows: int
    distinct_keys: int
    key_sum: int
    amount_sum: str
    digest: str


@dataclass(frozen=True)
class Source:
    dsn: str
    facts: SourceFacts


@contextmanager
def orders_source(prefix: str, rows: int) -> Iterator[Source]:
    """A fresh database holding ``orders`` (``rows`` rows) and its facts, dropped afterwards."""
    import psycopg

    from devtools.demo_data import generate_orders_pg

    with fresh_database(prefix) as dsn:
        generate_orders_pg(dsn, rows, "orders")
        with psycopg.connect(dsn) as conn:
            row = conn.execute(SOURCE_FACTS_SQL).fetchone()
        assert row is not None
        yield Source(dsn, SourceFacts(int(row[0]), int(row[1]), int(row[2]), str(row[3]), str(row[4])))


def source_facts(dsn: str, lo: int | None = None, below: int | None = None) -> SourceFacts:
    """:data:`SOURCE_FACTS_SQL` over the keys ``lo <= order_id < below`` (None: no bound)."""
    import psycopg

    where = " WHERE order_id >= COALESCE(%s, order_id) AND order_id < COALESCE(%s, order_id + 1)"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(SOURCE_FACTS_SQL.rstrip() + where, (lo, below)).fetchone()
    assert row is not None
    return SourceFacts(int(row[0]), int(row[1]), int(row[2]), str(row[3]), str(row[4]))


def file_facts(table: Any) -> SourceFacts:
    """The same facts as :data:`SOURCE_FACTS_SQL`, computed from the exported Parquet table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.sort_by("order_id")

    def text(name: str) -> Any:
        return pc.cast(table[name], pa.string())

    def epoch(name: str) -> Any:
        return pc.cast(pc.divide(pc.cast(table[name], pa.int64()), 1_000_000), pa.string())

    columns = [
        text("order_id"),
        text("customer_id"),
        table["customer_email"],
        table["status"],
        text("amount"),
        table["currency"],
        text("quantity"),
        table["product_sku"],
        table["country"],
        epoch("created_at"),
        epoch("updated_at"),
        pc.fill_null(table["note"], "<null>"),
    ]
    lines = pc.binary_join_element_wise(*columns, "|")
    digest = hashlib.md5("\n".join(lines.to_pylist()).encode(), usedforsecurity=False).hexdigest()
    return SourceFacts(
        rows=table.num_rows,
        distinct_keys=len(pc.unique(table["order_id"])),
        key_sum=int(pc.sum(table["order_id"]).as_py()),
        amount_sum=str(pc.sum(table["amount"]).as_py()),
        digest=digest,
    )


# -- S3 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    client: Any  # a boto3 S3 client

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def pending_uploads(self, prefix: str = "") -> list[str]:
        """Keys of multipart uploads begun and never completed or aborted (invisible, but stored)."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return sorted(u["Key"] for u in answer.get("Uploads", []))

    def connection(self, endpoint: str | None = None) -> dict[str, Any]:
        """An Airflow ``aws`` connection to this server (or to ``endpoint`` in front of it)."""
        return {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint or self.endpoint, "region_name": "us-east-1"},
        }


@contextmanager
def moto_s3() -> Iterator[S3]:
    """moto in server mode on loopback with a fresh bucket: reached over HTTP like any S3."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        bucket = f"export-tx-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield S3(endpoint, bucket, client)
    finally:
        server.stop()


# -- a PostgreSQL cluster of the test's own ------------------------------------------------------


def _postgres_bin(tool: str) -> Path:
    found = shutil.which(tool)
    if found:
        return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {tool} was not found (apt-get install postgresql)")
    return candidates[-1]


class PrivatePostgres:
    """A PostgreSQL cluster in a folder of the test's own, on a port of its own, which a test may
    stop and start (the machine's shared server is never touched). Trust authentication on
    loopback; as root it runs as the ``postgres`` user, as PostgreSQL requires."""

    def __init__(self) -> None:
        # A folder of its own under /tmp: the server's user must reach it (a test session's
        # folder is private to the user running the tests).
        self.root = Path(tempfile.mkdtemp(prefix="export-tx-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(_postgres_bin("initdb")), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(_postgres_bin("pg_ctl")), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session at once (what a restart does to clients); ``immediate`` is a crash."""
        self._run(str(_postgres_bin("pg_ctl")), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 1).close()
        except OSError:
            return False
        return True


# -- a proxy in front of S3 that fails on cue ----------------------------------------------------


@dataclass
class Held:
    """A request the proxy holds: ``arrived`` is set once it is held; ``release()`` cuts it."""

    method: str
    path: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


Match = Callable[[str, str], bool]


def read_request_head(client: socket.socket) -> bytes | None:
    """What a proxy reads of a request before forwarding it: at least its head (and whatever of the
    body came with it); None when the client went away or sent over 1 MiB of head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    return data


def with_connection_close(data: bytes) -> bytes:
    """The request with ``Connection: close``: one request per connection, so a proxy sees each."""
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest


class S3Proxy:
    """A TCP proxy between the product and the S3 server that sees each request's method and
    path (it asks for ``Connection: close``, so every request has a connection of its own) and,
    on cue, holds one request (the client stays blocked mid-upload until the test releases it)
    or starts an outage: that request and every connection for ``seconds`` are cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._holds: list[tuple[Match, Held]] = []
        self._outages: list[tuple[Match, float]] = []
        self._denied: list[Match] = []
        self._down_until = 0.0
        self.seen: list[tuple[str, str]] = []
        self.cut: list[tuple[str, str]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="s3-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self, match: Match) -> Held:
        """Hold the next request for which ``match(method, path)`` is true."""
        held = Held("", "")
        with self._lock:
            self._holds.append((match, held))
        return held

    def outage_on(self, match: Match, seconds: float) -> None:
        """When a request matching arrives, cut it and refuse everything for ``seconds``."""
        with self._lock:
            self._outages.append((match, seconds))

    def deny(self, match: Match) -> None:
        """Answer every request matching with S3's 403 AccessDenied (a final error: the product
        must not retry it) until :meth:`allow`."""
        with self._lock:
            self._denied.append(match)

    def allow(self) -> None:
        with self._lock:
            self._denied.clear()

    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = read_request_head(client)
            if head is None:
                return
            method, path = head.split(b" ", 2)[:2] if head.count(b" ") >= 2 else (b"", b"")
            m, p = method.decode("latin-1"), path.decode("latin-1")
            with self._lock:
                self.seen.append((m, p))
                held = next((h for match, h in self._holds if match(m, p)), None)
                if held is not None:
                    self._holds = [(match, h) for match, h in self._holds if h is not held]
                denied = any(match(m, p) for match in self._denied)
                outage = next(((match, s) for match, s in self._outages if match(m, p)), None)
                if outage is not None:
                    self._outages.remove(outage)
                    self._down_until = time.monotonic() + outage[1]
            if denied:
                self.cut.append((m, p))
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                        b"<Message>Access Denied</Message></Error>")  # fmt: skip
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
                return
            if held is not None:
                held.method, held.path = m, p
                held.arrived.set()
                held.released.wait(300)
                self.cut.append((m, p))
                return
            if self.down():
                self.cut.append((m, p))
                return
            self._forward(client, with_connection_close(head))
        finally:
            client.close()

    def _forward(self, client: socket.socket, first: bytes) -> None:
        upstream = socket.create_connection(self.upstream, 10)
        upstream.settimeout(None)
        try:
            upstream.sendall(first)

            def pump() -> None:
                try:
                    while chunk := client.recv(65536):
                        upstream.sendall(chunk)
                except OSError:
                    pass

            threading.Thread(target=pump, daemon=True).start()
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            upstream.close()
