"""Where export rows come from: one module per kind of source, each a :class:`Source`.

``sqlite`` (a SQLite file; the embedded demo database) and ``postgres`` (an Airflow connection
to PostgreSQL) stream Arrow record batches through ADBC (``adbc``); ``dbapi`` reads any other
Airflow SQL connection (MySQL/MariaDB mapped exactly) through its provider's hook. A definition's SQL uses
``:name`` placeholders; they are **bound**, never formatted into the text (``base``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from export_tx.sources.base import (
    WRAPPER_PREFIX,
    Described,
    Source,
    check_identifier,
    placeholders,
    time_limit,
    to_positional,
)
from export_tx.sources.dbapi import DbApiSource
from export_tx.sources.postgres import PgBinding, PostgresSource, postgres_uri, to_session_settings
from export_tx.sources.sqlite import SqliteSource

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "WRAPPER_PREFIX",
    "DbApiSource",
    "Described",
    "PgBinding",
    "PostgresSource",
    "Source",
    "SqliteSource",
    "check_identifier",
    "fetch_all",
    "placeholders",
    "postgres_uri",
    "stream",
    "time_limit",
    "to_positional",
    "to_session_settings",
]


def stream(source: Source, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None) -> Any:
    """``source.stream(...)``: the result of ``sql`` as Arrow record batches (a context manager)."""
    return source.stream(sql, params, binding)


def fetch_all(source: Source, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None) -> pa.Table:
    """Small results only (plans, counts)."""
    with source.stream(sql, params, binding) as reader:
        return reader.read_all()
