"""Where export rows come from: ADBC connections that stream Arrow record batches.

A definition names its source (the embedded SQLite demo file, another SQLite file, or an
Airflow connection to PostgreSQL). Its SQL uses ``:name`` placeholders; they are **bound**,
never formatted into the text. Each source also *describes* a query without running it: the
columns it returns with their types, and on PostgreSQL the type of every placeholder, so values
are bound as the type the query compares them with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export_tx.errors import DefinitionInvalid, FieldError, RequestInvalid, driver_message, is_transient
from export_tx.typemap import PgType

if TYPE_CHECKING:
    import pyarrow as pa

# ``:name`` but not a PostgreSQL ``::type`` cast, nor text inside quotes (kept simple: the
# definitions are code reviewed by the data team, user values never reach this text).
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
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
    return [m.group(1) for m in _PLACEHOLDER.finditer(sql)]


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file; ``path=None`` means the embedded demo database."""

    path: str | None = None
    dialect: str = "sqlite"

    def uri(self) -> str:
        from export_tx.settings import get_settings

        return str(self.path or get_settings().demo_db_path)

    def label(self) -> str:
        return f"SQLite file {self.path}" if self.path else "the embedded demo database"

    def unavailable(self) -> str | None:
        """Why this source cannot be read here, or None (a cheap check: nothing is opened)."""
        if Path(self.uri()).is_file():
            return None
        return f"{self.label()} does not exist here" + ("" if self.path else " (make demo creates it)")


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL database named by an Airflow connection id."""

    conn_id: str
    dialect: str = "postgresql"

    def uri(self) -> str:
        return postgres_uri(self.conn_id)

    def label(self) -> str:
        return f"PostgreSQL connection {self.conn_id!r}"

    def unavailable(self) -> str | None:
        """Why this source cannot be read here, or None: the connection must be defined (a cheap
        check; whether the server answers is found out by a preview or the export itself)."""
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(self.conn_id)
        except Exception:  # AirflowNotFoundException, or no way to reach the connections at all
            return f"the Airflow connection {self.conn_id!r} is not defined in this deployment"
        return None


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
    """One row of bind parameters with explicit types (a bare NULL binds as text).

    Built from raw buffers: converting Python objects (``pa.array``) makes pyarrow import pandas,
    about 0.3 s of every task's start-up.
    """
    import struct

    import pyarrow as pa

    def one(value: Any) -> pa.Array:
        if value is None:
            nothing = [pa.py_buffer(b"\x00"), pa.py_buffer(bytes(8)), pa.py_buffer(b"")]  # validity bit 0
            return pa.Array.from_buffers(pa.string(), 1, nothing, null_count=1)
        if isinstance(value, bool):
            return pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x01" if value else b"\x00")])
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise OverflowError("a bound integer must fit in 64 bits")
            return pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(struct.pack("<q", value))])
        if isinstance(value, float):
            return pa.Array.from_buffers(pa.float64(), 1, [None, pa.py_buffer(struct.pack("<d", value))])
        data = str(value).encode()
        offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
        return pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])

    arrays = [one(value) for value in values]
    return pa.RecordBatch.from_arrays(arrays, names=[f"p{i}" for i in range(len(arrays))])


@contextmanager
def connect(source: Source) -> Iterator[Any]:
    """An ADBC connection (the driver manager's own API) to the source.

    Not the DB-API layer: ``adbc_driver_manager.dbapi`` imports ``pyarrow.dataset``, which imports
    pandas — about 0.8 s of start-up in every task process that reads a source, for nothing.
    """
    import adbc_driver_manager as adbc

    if isinstance(source, SqliteSource):
        import adbc_driver_sqlite

        database = adbc_driver_sqlite.connect(source.uri())
    else:
        import adbc_driver_postgresql

        database = adbc_driver_postgresql.connect(source.uri())
    try:
        conn = adbc.AdbcConnection(database)
        try:
            # As the DB-API does: one transaction, never committed (the session only reads).
            conn.set_autocommit(False)
            yield conn
        finally:
            conn.close()
    finally:
        database.close()


def statement(conn: Any, sql: str, parameters: pa.RecordBatch | None = None) -> Any:
    """A prepared ADBC statement of ``sql`` with one row of ``parameters`` bound. The caller closes
    it, and only after reading its result: the result stream belongs to the statement."""
    import adbc_driver_manager as adbc

    stmt = adbc.AdbcStatement(conn)
    stmt.set_sql_query(sql)
    try:
        stmt.prepare()
    except adbc.NotSupportedError:  # not every driver prepares
        pass
    if parameters is not None:
        stmt.bind(parameters)
    return stmt


def run(conn: Any, sql: str, parameters: pa.RecordBatch | None = None) -> None:
    """Run a statement whose result is not needed (settings)."""
    stmt = statement(conn, sql, parameters)
    try:
        stmt.execute_update()
    finally:
        stmt.close()


def result_stream(stmt: Any) -> pa.RecordBatchReader:
    """Execute ``stmt``; its result as Arrow record batches. Errors while streaming arrive as the
    driver's own exceptions (transient or not), as through the DB-API, not as ArrowInvalid."""
    from adbc_driver_manager._reader import AdbcRecordBatchReader

    handle, _ = stmt.execute_query()
    reader: pa.RecordBatchReader = AdbcRecordBatchReader._import_from_c(handle.address)
    return reader


# -- binding on PostgreSQL ------------------------------------------------------------------------

#: PostgreSQL types of the wrappers' own placeholders that are not the key's.
_WRAPPER_TYPES = {"export_tx_batch_size": "bigint", "export_tx_limit": "bigint", "export_tx_first": "bigint",
                  "export_tx_width": "bigint"}  # fmt: skip


@dataclass(frozen=True)
class PgBinding:
    """How each placeholder is typed: one type per occurrence in the definition's SQL (the type
    PostgreSQL infers there), and the key column's type for the batch bounds."""

    occurrences: tuple[str, ...] = ()
    key_type: str = "text"

    def type_of(self, name: str, index: int) -> str | None:
        if name.startswith(WRAPPER_PREFIX):
            return _WRAPPER_TYPES.get(name, self.key_type)
        return self.occurrences[index] if index < len(self.occurrences) else None


def setting_value(value: Any) -> str:
    """A bound value as the text ``set_config()`` takes (PostgreSQL casts it to the bound type)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def to_session_settings(
    sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
) -> tuple[str, dict[str, str]]:
    """PostgreSQL: rewrite each ``:name`` to read a session setting, returned to be set by binding.

    The ADBC PostgreSQL driver streams a result (COPY) only for a query without bind parameters;
    with parameters it materialises the whole result in memory. So the values are bound to
    ``set_config()`` in a statement of their own and the streamed query reads them back with
    ``current_setting()`` — still bound, never formatted into SQL. Each read is cast to the type
    the query gives that placeholder (``binding``), so a NULL is a typed NULL too.

    PostgreSQL's planner reads the settings when it estimates, so a definition's filter written
    ``created_at >= COALESCE(CAST(:since AS date), '-infinity')`` uses an index on ``created_at``
    (``:since IS NULL OR created_at >= :since`` cannot: the OR hides the range).
    """
    settings: dict[str, str] = {}
    index = 0

    def repl(match: re.Match[str]) -> str:
        nonlocal index
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL placeholder :{name} has no value")
        pg_type = binding.type_of(name, index) if binding is not None else _python_pg_type(params[name])
        if not name.startswith(WRAPPER_PREFIX):
            index += 1
        value = params[name]
        if value is None:
            return f"CAST(NULL AS {pg_type or 'text'})"
        setting = f"export_tx.p_{name}"
        settings[setting] = setting_value(value)
        read = f"current_setting('{setting}')"
        return f"CAST({read} AS {pg_type})" if pg_type and pg_type != "text" else read

    return _PLACEHOLDER.sub(repl, sql), settings


def _python_pg_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    return None


_TIME_LIMIT: ContextVar[float | None] = ContextVar("export_tx_time_limit", default=None)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Every PostgreSQL statement run inside stops after ``seconds`` (previews answer people
    waiting on an HTTP request; exports themselves have no limit)."""
    token = _TIME_LIMIT.set(seconds)
    try:
        yield
    finally:
        _TIME_LIMIT.reset(token)


@contextmanager
def stream(
    source: Source, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
) -> Iterator[pa.RecordBatchReader]:
    """Run ``sql`` with bound ``params``; yield the result as a stream of Arrow record batches
    (memory bounded by the driver's batch size, whatever the result's size)."""
    with connect(source) as conn:
        if isinstance(source, PostgresSource):
            # A definition's query only ever reads: the session refuses any write.
            run(conn, "SET default_transaction_read_only = on")
            # Compiling an export's simple expressions costs more than it saves: 1.6 s of a 20M-row
            # count, 7 % of a batch's COPY (measured on PostgreSQL 15).
            run(conn, "SET jit = off")
            limit = _TIME_LIMIT.get()
            if limit is not None:
                run(conn, f"SET statement_timeout = {int(limit * 1000)}")  # a number we computed
            text, settings = to_session_settings(sql, params, binding)
            if settings:
                calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(settings)))
                values = [v for item in settings.items() for v in item]
                run(conn, f"SELECT {calls}", bind_batch(values))  # only $n placeholders
            stmt = statement(conn, text)
        else:
            text, positional = to_positional(sql, source.dialect, params)
            stmt = statement(conn, text, bind_batch(positional) if positional else None)
        try:
            reader = result_stream(stmt)
            try:
                yield reader
            finally:
                reader.close()
        finally:
            stmt.close()


def fetch_all(source: Source, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None) -> pa.Table:
    """Small results only (plans, counts)."""
    with stream(source, sql, params, binding) as reader:
        return reader.read_all()


# -- describing a query ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """What a source says about a query before it runs."""

    #: (name, PostgreSQL type) or (name, SQLite declared type), in the query's order.
    columns: tuple[tuple[str, Any], ...]
    #: PostgreSQL: the type of each placeholder occurrence of the definition's SQL.
    binding: PgBinding | None = None


_PG_OIDS_BY_SCHEMA_TYPE = {"integer": 20, "number": 1700, "boolean": 16}
_PG_OIDS_BY_FORMAT = {"date": 1082, "date-time": 1184, "time": 1083, "uuid": 2950}
_UNDETERMINED = re.compile(r"could not determine data type of parameter \$(\d+)")


def fallback_oid(spec: Mapping[str, Any]) -> int:
    """The PostgreSQL type a placeholder gets where the query does not say (``:p IS NULL``),
    from the parameter's JSON schema."""
    if spec.get("type") == "string":
        return _PG_OIDS_BY_FORMAT.get(str(spec.get("format")), 25)
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return _PG_OIDS_BY_SCHEMA_TYPE.get(str(kind), 25)


def _refuse(definition: str, field: str, message: str) -> DefinitionInvalid:
    return DefinitionInvalid(definition, [FieldError(field, message)])


def describe_postgres(
    source: PostgresSource,
    definition: str,
    sql: str,
    param_specs: Mapping[str, Mapping[str, Any]],
    values: Mapping[str, Any] | None = None,
) -> Described:
    """Prepare (never run) the definition's query and ask PostgreSQL for the type of every column
    and placeholder. A placeholder PostgreSQL cannot type (``:since IS NULL``) gets its JSON
    schema's type. Raises :class:`DefinitionInvalid` when PostgreSQL refuses the query, and
    :class:`RequestInvalid` when one of ``values`` is not a valid value of its placeholder's type
    (a ``bigint`` filter refuses 10^20, an ``integer`` one 3·10^9) — named, before any work."""
    import psycopg
    from psycopg import pq

    names = placeholders(sql)
    counter = iter(range(1, len(names) + 1))
    numbered = _PLACEHOLDER.sub(lambda m: f"${next(counter)}", sql)
    oids = [0] * len(names)
    with psycopg.connect(source.uri(), autocommit=True, connect_timeout=30) as conn:
        conn.execute("SET statement_timeout = '30s'")
        pgconn = conn.pgconn
        for _ in range(len(names) + 1):
            result = pgconn.prepare(b"", numbered.encode(), oids)
            if result.status == pq.ExecStatus.COMMAND_OK:
                break
            message = (result.error_message or b"").decode("utf-8", "replace")
            state = bytes(result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            undetermined = _UNDETERMINED.search(message)
            if undetermined and oids[int(undetermined.group(1)) - 1] == 0:
                position = int(undetermined.group(1)) - 1
                oids[position] = fallback_oid(param_specs.get(names[position], {}))
                continue
            try:
                error: Exception = psycopg.errors.lookup(state)(message)
            except KeyError:
                error = psycopg.OperationalError(message)
            if is_transient(error):
                raise error
            raise _refuse(definition, "sql", f"PostgreSQL refuses the query: {driver_message(error)}")
        else:  # pragma: no cover - every placeholder was typed and it still did not prepare
            raise _refuse(definition, "sql", "PostgreSQL cannot type the query's placeholders")
        info = pgconn.describe_prepared(b"")
        param_oids = [info.param_type(i) for i in range(info.nparams)]
        fields = [
            (bytes(info.fname(i) or b"").decode("utf-8", "replace"), info.ftype(i), info.fmod(i))
            for i in range(info.nfields)
        ]
        if not fields:
            raise _refuse(definition, "sql", "the query returns no columns; it must be a SELECT")
        types = _pg_types(conn, [oid for _, oid, _ in fields] + param_oids)
        displays = _pg_displays(conn, [(oid, mod) for _, oid, mod in fields])
        occurrences = tuple(types[oid].display for oid in param_oids)
        if values:
            _check_values(conn, names, occurrences, values)
    # PostgreSQL reports a domain column as its base type; arrays of a domain are read as arrays
    # of the base type (the driver does not know the domain).
    columns = []
    for (name, oid, mod), display in zip(fields, displays, strict=True):
        catalog = types[oid]
        cast_to = None
        element = catalog.element
        if element is not None and catalog.element_domain:
            cast_to = f"{_typmod_display(element.display, element.name, element.typmod)}[]"
        columns.append((name, PgType(catalog.name, display, catalog.typtype, mod, element, cast_to=cast_to)))
    return Described(tuple(columns), PgBinding(occurrences))


def _check_values(conn: Any, names: Sequence[str], types: Sequence[str], values: Mapping[str, Any]) -> None:
    """Each value cast by PostgreSQL to the type of each placeholder it fills."""
    import psycopg

    pairs = {(name, pg_type): values[name] for name, pg_type in zip(names, types, strict=False)
             if values.get(name) is not None}  # fmt: skip
    errors: list[FieldError] = []
    for (name, pg_type), value in sorted(pairs.items()):
        try:
            # The type name comes from PostgreSQL's catalog (format_type), never from a user.
            conn.execute(f"SELECT CAST(CAST(%s AS text) AS {pg_type})", (setting_value(value),))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityConstraintViolation) as exc:
            errors.append(FieldError(f"params.{name}", _param_problem(exc, name, pg_type)))
    if errors:
        raise RequestInvalid(errors)


def _param_problem(exc: Any, name: str, pg_type: str) -> str:
    state = getattr(exc, "sqlstate", "") or ""
    where = f"the type :{name} has in the definition's query"
    if state == "22003":
        return f"out of range for {pg_type}, {where}"
    if state.startswith("23"):
        return f"not allowed by {pg_type}, {where}"
    return f"not a valid {pg_type}, {where}"


@dataclass(frozen=True)
class _CatalogType:
    oid: int
    name: str
    typtype: str
    element: PgType | None
    display: str  # format_type(oid, NULL)
    typmod: int = -1  # a domain's base typmod
    element_domain: bool = False  # an array of a domain


def _typmod_display(display: str, name: str, typmod: int) -> str:
    """``numeric`` with a typmod as SQL: ``numeric(10,2)``; other types as they are."""
    from export_tx.typemap import numeric_typmod

    if name == "numeric" and (ps := numeric_typmod(typmod)) is not None:
        return f"numeric({ps[0]},{ps[1]})"
    if name in ("varchar", "bpchar") and typmod > 4:
        return f"{display}({typmod - 4})"
    return display


def _pg_types(conn: Any, oids: Sequence[int]) -> dict[int, _CatalogType]:
    """Catalog facts for ``oids``, with the element types of arrays and base types of domains."""
    wanted = set(oids)
    query = (
        "SELECT t.oid, t.typname, t.typtype, t.typelem, t.typbasetype, t.typtypmod, t.typcategory, "
        "format_type(t.oid, NULL) FROM pg_type t WHERE t.oid = ANY(%s)"
    )
    rows: dict[int, tuple[Any, ...]] = {}
    while wanted - set(rows):
        missing = sorted(wanted - set(rows))
        fetched = conn.execute(query, (missing,)).fetchall()
        if not fetched:
            break
        for row in fetched:
            rows[row[0]] = row
            if row[6] == "A" and row[3]:
                wanted.add(row[3])
            if row[2] == "d" and row[4]:
                wanted.add(row[4])
    found: dict[int, _CatalogType] = {}

    def build(oid: int) -> _CatalogType:
        if oid not in found:
            row = rows.get(oid)
            if row is None:
                found[oid] = _CatalogType(oid, f"unknown<oid:{oid}>", "p", None, "text")
                return found[oid]
            _, name, typtype, elem, base, basemod, category, display = row
            if typtype == "d" and base in rows:  # a domain is what its base type is
                inner = build(base)
                found[oid] = _CatalogType(oid, inner.name, inner.typtype, inner.element, inner.display, basemod)
                return found[oid]
            element, element_domain = None, False
            if category == "A" and elem:
                inner = build(elem)
                element = PgType(inner.name, inner.display, inner.typtype, inner.typmod, inner.element)
                element_domain = rows.get(elem, (None, None, None))[2] == "d"
            found[oid] = _CatalogType(oid, name, typtype, element, display, element_domain=element_domain)
        return found[oid]

    return {oid: build(oid) for oid in set(oids) | set(rows)}


def _pg_displays(conn: Any, pairs: Sequence[tuple[int, int]]) -> list[str]:
    """``format_type(oid, typmod)`` of each column: ``numeric(38,10)``, ``character varying(10)``."""
    if not pairs:
        return []
    rows = conn.execute(
        "SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY AS u(o, m, i) ORDER BY i",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    return [str(r[0]) for r in rows]


def describe_sqlite(source: SqliteSource, definition: str, sql: str) -> Described:
    """The query's columns and their declared types, from a temporary view of it (placeholders
    read as NULL: a declared type never depends on a value). The source file is opened read-only."""
    import sqlite3
    from pathlib import Path

    path = Path(source.uri())
    if not path.exists():
        raise _refuse(definition, "source", f"{source.label()} does not exist")
    text = _PLACEHOLDER.sub("NULL", sql)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        try:
            conn.execute(f"CREATE TEMP VIEW export_tx_probe AS {text}")
            rows = conn.execute("PRAGMA temp.table_info(export_tx_probe)").fetchall()
        except sqlite3.Error as exc:
            if is_transient(exc) and "no such" not in str(exc) and "syntax" not in str(exc):
                raise
            raise _refuse(definition, "sql", f"SQLite refuses the query: {driver_message(exc)}") from exc
    finally:
        conn.close()
    names = [str(r[1]) for r in rows]
    # A view renames a repeated column "id:1"; the query itself would return two "id" columns.
    for name in names:
        base, sep, suffix = name.rpartition(":")
        if sep and suffix.isdigit() and base in names:
            raise _refuse(definition, "sql", f"the query returns more than one column named {base!r}; name each once")
    return Described(tuple((str(r[1]), str(r[2] or "")) for r in rows))
