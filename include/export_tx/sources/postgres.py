"""PostgreSQL, named by an Airflow connection, through the ADBC PostgreSQL driver (Arrow straight
from the server's binary COPY). Each placeholder is bound as the type PostgreSQL infers for it,
through session settings, so a value is compared as the query's own type; describing a query
prepares it (never runs it) and reads the catalog's type of every column and placeholder."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from export_tx.columns.typemap import PgType
from export_tx.errors import FieldError, RequestInvalid, driver_message, is_transient
from export_tx.sources import adbc, snapshot
from export_tx.sources.base import PLACEHOLDER, TIME_LIMIT, WRAPPER_PREFIX, Described, placeholders, refuse

if TYPE_CHECKING:
    import pyarrow as pa


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

    @contextmanager
    def stream(
        self, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        import adbc_driver_postgresql

        with adbc.connection(adbc_driver_postgresql.connect(self.uri())) as conn:
            # A definition's query only ever reads: the transaction refuses any write. On a
            # point-in-time export it reads the export's snapshot (first, before any query).
            snapshot.begin_reading(conn)
            adbc.run(conn, "SET default_transaction_read_only = on")
            # Compiling an export's simple expressions costs more than it saves: 1.6 s of a 20M-row
            # count, 7 % of a batch's COPY (measured on PostgreSQL 15).
            adbc.run(conn, "SET jit = off")
            limit = TIME_LIMIT.get()
            if limit is not None:
                adbc.run(conn, f"SET statement_timeout = {int(limit * 1000)}")  # a number we computed
            text, settings = to_session_settings(sql, params, binding)
            if settings:
                calls = ", ".join(f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(settings)))
                values = [v for item in settings.items() for v in item]
                adbc.run(conn, f"SELECT {calls}", adbc.bind_batch(values))  # only $n placeholders
            with adbc.query(conn, text) as reader:
                yield reader

    def describe(
        self,
        definition: str,
        sql: str,
        param_specs: Mapping[str, Mapping[str, Any]],
        values: Mapping[str, Any] | None = None,
    ) -> Described:
        return describe_postgres(self, definition, sql, param_specs, values)


def postgres_uri(conn_id: str) -> str:
    """A libpq URI for an Airflow connection, resolved lazily (never at parse time)."""
    from airflow.sdk import BaseHook

    return connection_uri(BaseHook.get_connection(conn_id))


def connection_uri(conn: Any) -> str:
    """A libpq URI for an Airflow connection object (``BaseHook.get_connection`` or, in the
    triggerer, ``aget_connection``)."""
    from urllib.parse import quote

    user = quote(conn.login or "", safe="")
    password = quote(conn.password or "", safe="")
    auth = f"{user}:{password}@" if conn.password else (f"{user}@" if user else "")
    host = conn.host or "localhost"
    port = f":{conn.port}" if conn.port else ""
    database = conn.schema or ""
    return f"postgresql://{auth}{host}{port}/{database}"


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

    return PLACEHOLDER.sub(repl, sql), settings


def _python_pg_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    return None


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
    numbered = PLACEHOLDER.sub(lambda m: f"${next(counter)}", sql)
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
            raise refuse(definition, "sql", f"PostgreSQL refuses the query: {driver_message(error)}")
        else:  # pragma: no cover - every placeholder was typed and it still did not prepare
            raise refuse(definition, "sql", "PostgreSQL cannot type the query's placeholders")
        info = pgconn.describe_prepared(b"")
        param_oids = [info.param_type(i) for i in range(info.nparams)]
        fields = [
            (bytes(info.fname(i) or b"").decode("utf-8", "replace"), info.ftype(i), info.fmod(i))
            for i in range(info.nfields)
        ]
        if not fields:
            raise refuse(definition, "sql", "the query returns no columns; it must be a SELECT")
        types = _pg_types(conn, [oid for _, oid, _ in fields] + param_oids)
        displays = _pg_displays(conn, [(oid, mod) for _, oid, mod in fields])
        occurrences = tuple(types[oid].display for oid in param_oids)
        if values:
            _check_values(conn, names, occurrences, values)
        estimated = None if values is None else _estimated_rows(pgconn, numbered, names, param_oids, values)
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
    return Described(tuple(columns), PgBinding(occurrences), estimated)


def _estimated_rows(
    pgconn: Any, numbered: str, names: Sequence[str], oids: Sequence[int], values: Mapping[str, Any]
) -> int | None:
    """The planner's row estimate for the query with ``values`` bound (EXPLAIN: planned, never
    run). Each value goes as text with its placeholder's type, as the export's own query casts it.
    None where PostgreSQL gives none: the estimate only steers how planning counts."""
    import json

    from psycopg import pq

    if any(name not in values for name in names):
        return None
    texts = [None if values[n] is None else setting_value(values[n]).encode() for n in names]
    result = pgconn.exec_params(b"EXPLAIN (FORMAT JSON) " + numbered.encode(), texts, list(oids))
    if result.status != pq.ExecStatus.TUPLES_OK or result.ntuples != 1:
        return None
    try:
        rows = json.loads(bytes(result.get_value(0, 0) or b"null"))[0]["Plan"]["Plan Rows"]
    except (ValueError, LookupError, TypeError):
        return None
    return int(rows) if isinstance(rows, int | float) else None


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
    from export_tx.columns.typemap import numeric_typmod

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
