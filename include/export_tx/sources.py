"""Where export rows come from: ADBC connections that stream Arrow record batches.

A definition names its source (the embedded SQLite demo file or an Airflow connection to
PostgreSQL). Its SQL uses ``:name`` placeholders; they are rewritten to the driver's
positional style and **bound** as an Arrow record batch, never formatted into the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# ``:name`` but not a PostgreSQL ``::type`` cast, nor text inside quotes (kept simple: the
# definitions are code reviewed by the data team, user values never reach this text).
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str) -> str:
    """Column names are formatted into SQL, so they must be plain identifiers."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain SQL identifier")
    return name


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file; ``path=None`` means the embedded demo database."""

    path: str | None = None
    dialect: str = "sqlite"

    def uri(self) -> str:
        from export_tx.settings import get_settings

        return str(self.path or get_settings().demo_db_path)


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL database named by an Airflow connection id."""

    conn_id: str
    dialect: str = "postgresql"

    def uri(self) -> str:
        return postgres_uri(self.conn_id)


Source = SqliteSource | PostgresSource


def postgres_uri(conn_id: str) -> str:
    """A libpq URI for an Airflow connection, resolved lazily (never at parse time)."""
    from urllib.parse import quote

    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    user = quote(conn.login or "", safe="")
    password = quote(conn.password or "", safe="")
    auth = f"{user}:{password}@" if conn.password else (f"{user}@" if user else "")
    host = conn.host or "localhost"
    port = f":{conn.port}" if conn.port else ""
    database = conn.schema or ""
    return f"postgresql://{auth}{host}{port}/{database}"


def to_positional(sql: str, dialect: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Rewrite ``:name`` placeholders to the driver's style; return the values in order."""
    values: list[Any] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL placeholder :{name} has no value")
        values.append(params[name])
        return "?" if dialect == "sqlite" else f"${len(values)}"

    return _PLACEHOLDER.sub(repl, sql), values


def bind_batch(values: Sequence[Any]) -> pa.RecordBatch:
    """One row of bind parameters with explicit types (a bare NULL binds as text)."""
    import pyarrow as pa

    arrays = []
    for value in values:
        if value is None:
            arrays.append(pa.array([None], pa.string()))
        elif isinstance(value, bool):
            arrays.append(pa.array([value], pa.bool_()))
        elif isinstance(value, int):
            arrays.append(pa.array([value], pa.int64()))
        elif isinstance(value, float):
            arrays.append(pa.array([value], pa.float64()))
        else:
            arrays.append(pa.array([str(value)], pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=[f"p{i}" for i in range(len(arrays))])


@contextmanager
def connect(source: Source) -> Iterator[Any]:
    """An ADBC DB-API connection to the source."""
    if isinstance(source, SqliteSource):
        import adbc_driver_sqlite.dbapi as sqlite_dbapi

        conn = sqlite_dbapi.connect(source.uri())
    else:
        import adbc_driver_postgresql.dbapi as pg_dbapi

        conn = pg_dbapi.connect(source.uri())
    try:
        yield conn
    finally:
        conn.close()


_PG_CASTS: tuple[tuple[type, str], ...] = ((bool, "boolean"), (int, "bigint"), (float, "double precision"))


def to_session_settings(sql: str, params: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """PostgreSQL: rewrite each ``:name`` to read a session setting, returned to be set by binding.

    The ADBC PostgreSQL driver streams a result (COPY) only for a query without bind parameters;
    with parameters it materialises the whole result in memory. So the values are bound to
    ``set_config()`` in a statement of their own and the streamed query reads them back with
    ``current_setting()`` — still bound, never formatted into SQL. NULL is the keyword itself.
    """
    settings: dict[str, str] = {}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL placeholder :{name} has no value")
        value = params[name]
        if value is None:
            return "CAST(NULL AS text)"
        setting = f"export_tx.p_{name}"
        settings[setting] = str(value).lower() if isinstance(value, bool) else str(value)
        read = f"current_setting('{setting}')"
        for kind, pg_type in _PG_CASTS:
            if isinstance(value, kind):
                return f"CAST({read} AS {pg_type})"
        return read

    return _PLACEHOLDER.sub(repl, sql), settings


@contextmanager
def stream(source: Source, sql: str, params: Mapping[str, Any]) -> Iterator[pa.RecordBatchReader]:
    """Run ``sql`` with bound ``params``; yield the result as a stream of Arrow record batches
    (memory bounded by the driver's batch size, whatever the result's size)."""
    with connect(source) as conn:
        cur = conn.cursor()
        try:
            if isinstance(source, PostgresSource):
                text, settings = to_session_settings(sql, params)
                if settings:
                    calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(settings)))
                    values = [v for item in settings.items() for v in item]
                    cur.execute(f"SELECT {calls}", bind_batch(values))  # only $n placeholders
                    cur.fetchall()
                cur.execute(text)
            else:
                text, positional = to_positional(sql, source.dialect, params)
                cur.execute(text, bind_batch(positional) if positional else None)
            yield cur.fetch_record_batch()
        finally:
            cur.close()


def fetch_all(source: Source, sql: str, params: Mapping[str, Any]) -> pa.Table:
    """Small results only (plans, counts)."""
    with stream(source, sql, params) as reader:
        return reader.read_all()
