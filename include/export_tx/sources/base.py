"""Where export rows come from: the protocol every kind of source implements, and the SQL helpers
they share (named placeholders, bound never formatted; the wrappers' own parameters).

A definition names its source (the embedded SQLite demo file, another SQLite file, or an
Airflow connection to PostgreSQL). Its SQL uses ``:name`` placeholders; they are **bound**,
never formatted into the text. Each source also *describes* a query without running it: the
columns it returns with their types, and on PostgreSQL the type of every placeholder, so values
are bound as the type the query compares them with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from export_tx.errors import DefinitionInvalid, FieldError

if TYPE_CHECKING:
    import pyarrow as pa

    from export_tx.sources.postgres import PgBinding


# ``:name`` but not a PostgreSQL ``::type`` cast, nor text inside quotes (kept simple: the
# definitions are code reviewed by the data team, user values never reach this text).
PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Placeholders the product's own query wrappers use (batch bounds, batch size, preview rows).
WRAPPER_PREFIX = "export_tx_"


def check_identifier(name: str) -> str:
    """Column names are formatted into SQL, so they must be plain identifiers."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain SQL identifier")
    return name


def placeholders(sql: str) -> list[str]:
    """The ``:name`` placeholders of ``sql``, in order, repeats included."""
    return [m.group(1) for m in PLACEHOLDER.finditer(sql)]


class Source(Protocol):
    """A kind of source: one module of this package each (``sqlite``, ``postgres``).

    A source is a frozen dataclass a definition holds; nothing is opened until a task asks.
    """

    @property
    def dialect(self) -> str:
        """How the product's own SQL wrappers are written for it (``sqlite``, ``postgresql``)."""
        ...

    def label(self) -> str:
        """How a message names it (never a password)."""
        ...

    def uri(self) -> str:
        """Where its driver connects (resolved when needed, never at parse time)."""
        ...

    def unavailable(self) -> str | None:
        """Why it cannot be read here, or None (a cheap check: nothing is opened)."""
        ...

    def stream(
        self, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
    ) -> AbstractContextManager[pa.RecordBatchReader]:
        """Run ``sql`` with bound ``params``; the result as a stream of Arrow record batches
        (memory bounded by the driver's batch size, whatever the result's size)."""
        ...

    def describe(
        self,
        definition: str,
        sql: str,
        param_specs: Mapping[str, Mapping[str, Any]],
        values: Mapping[str, Any] | None = None,
    ) -> Described:
        """The query's columns and their source types, without running it; refuses (naming the
        field) a query the source will not run or a value a placeholder cannot take."""
        ...


def to_positional(sql: str, dialect: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Rewrite ``:name`` placeholders to the driver's style; return the values in order."""
    values: list[Any] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL placeholder :{name} has no value")
        values.append(params[name])
        return "?" if dialect == "sqlite" else f"${len(values)}"

    return PLACEHOLDER.sub(repl, sql), values


TIME_LIMIT: ContextVar[float | None] = ContextVar("export_tx_time_limit", default=None)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Every PostgreSQL statement run inside stops after ``seconds`` (previews answer people
    waiting on an HTTP request; exports themselves have no limit)."""
    token = TIME_LIMIT.set(seconds)
    try:
        yield
    finally:
        TIME_LIMIT.reset(token)


@dataclass(frozen=True)
class Described:
    """What a source says about a query before it runs."""

    #: (name, PostgreSQL type) or (name, SQLite declared type), in the query's order.
    columns: tuple[tuple[str, Any], ...]
    #: PostgreSQL: the type of each placeholder occurrence of the definition's SQL.
    binding: PgBinding | None = None
    #: PostgreSQL: how many rows the planner expects the query to return with the request's values
    #: (an estimate from its statistics; no row is read). None where the source gives none.
    estimated_rows: int | None = None


def refuse(definition: str, field: str, message: str) -> DefinitionInvalid:
    return DefinitionInvalid(definition, [FieldError(field, message)])
