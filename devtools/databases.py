"""Fresh PostgreSQL databases for the tests and the benchmark (a stack's metadata, a header store,
a source): created under a unique name, dropped afterwards even while connections are open."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fresh_database(server_dsn: str, prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>`` on ``server_dsn``'s server; yields its DSN."""
    import psycopg
    from psycopg import sql

    admin = server_dsn.rsplit("/", 1)[0] + "/postgres"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
