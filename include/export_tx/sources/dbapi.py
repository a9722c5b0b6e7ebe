"""Any Airflow SQL connection without an ADBC driver, through its provider's hook (a
``DbApiHook``): rows fetched ``fetchmany`` at a time into Arrow record batches (memory bounded
by one batch, whatever the result's size), with the definition's ``:name`` placeholders rewritten
to the driver's paramstyle and **bound**.

A connection whose type is ``postgres`` is read through the ADBC path (:class:`PostgresSource`).
Column types are mapped exactly for MySQL/MariaDB (``MySQLdb``, ``mysql-connector-python``,
``pymysql``); a type that cannot be kept exactly is refused, naming the column.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from export_tx.columns.typemap import (
    MYSQL_BINARY_CHARSET,
    MYSQL_DRIVERS,
    MYSQL_TYPE_NAMES,
    DbApiType,
    mysql_arrow_type,
    mysql_quote_identifier,
)
from export_tx.errors import DataNotExportable, Unsupported, driver_message, is_transient
from export_tx.sources import snapshot
from export_tx.sources.base import PLACEHOLDER, TIME_LIMIT, Described, refuse

if TYPE_CHECKING:
    import pyarrow as pa

    from export_tx.sources.postgres import PgBinding, PostgresSource

#: Rows fetched (and held) at a time.
FETCH_ROWS = 10_000
_POSTGRES = ("postgres", "postgresql")
_MYSQL = ("mysql", "mariadb")
_STRINGS = {"VARCHAR", "CHAR", "TEXT"}


@dataclass(frozen=True)
class DbApiSource:
    """A database named by an Airflow connection id, read through the connection's own hook."""

    conn_id: str

    @property
    def dialect(self) -> str:
        """``mysql`` for MySQL/MariaDB (backticks, ``MOD``), ``postgresql``, else the conn_type."""
        kind = self._conn_type()
        if kind in _POSTGRES:
            return "postgresql"
        return "mysql" if kind in _MYSQL else kind

    def label(self) -> str:
        return f"Airflow connection {self.conn_id!r}"

    def uri(self) -> str:
        return f"airflow-connection://{self.conn_id}"  # where it connects is the hook's business

    def unavailable(self) -> str | None:
        try:
            self._conn_type()
        except Exception:  # AirflowNotFoundException, or no way to reach the connections at all
            return f"the Airflow connection {self.conn_id!r} is not defined in this deployment"
        return None

    def _conn_type(self) -> str:
        from airflow.sdk import BaseHook

        return str(BaseHook.get_connection(self.conn_id).conn_type or "").lower()

    def _postgres(self) -> PostgresSource | None:
        """PostgreSQL keeps its ADBC path (binary COPY, typed binding)."""
        from export_tx.sources.postgres import PostgresSource

        return PostgresSource(self.conn_id) if self._conn_type() in _POSTGRES else None

    @contextmanager
    def _cursor(self, streaming: bool) -> Iterator[tuple[Any, str]]:
        """A cursor of a new connection from the hook, and the driver's module; both closed after."""
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection(self.conn_id).get_hook()
        conn = hook.get_conn()
        driver = type(conn).__module__
        try:
            cursor = _new_cursor(conn, driver, streaming)
            try:
                if driver.split(".")[0] in MYSQL_DRIVERS:
                    # TIMESTAMP values are instants: read in UTC, exported as UTC, never shifted.
                    cursor.execute("SET time_zone = '+00:00'")
                    # A definition's query only ever reads: the transaction refuses any write.
                    cursor.execute("SET SESSION TRANSACTION READ ONLY")
                    limit = TIME_LIMIT.get()
                    if limit is not None:
                        cursor.execute(f"SET SESSION max_statement_time = {float(limit)}")  # a number we computed
                yield cursor, driver
            finally:
                cursor.close()
        finally:
            conn.close()

    @contextmanager
    def stream(
        self, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        import pyarrow as pa

        postgres = self._postgres()
        if postgres is not None:
            with postgres.stream(sql, params, binding) as reader:
                yield reader
            return
        snapshot.refuse_inside(self.label())
        with self._cursor(streaming=True) as (cursor, driver):
            text, args = to_paramstyle(sql, params, _paramstyle(driver))
            cursor.execute(text, args)
            names = [str(d[0]) for d in cursor.description]
            types = [_stream_type(t, name) for t, name in zip(_types(cursor, driver), names, strict=True)]
            first = cursor.fetchmany(FETCH_ROWS)
            # Columns the description leaves open are typed by the first rows' values.
            types = [_value_type(t, [row[i] for row in first]) for i, t in enumerate(types)]
            schema = pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
            yield pa.RecordBatchReader.from_batches(schema, _batches(cursor, schema, first))

    def describe(
        self,
        definition: str,
        sql: str,
        param_specs: Mapping[str, Mapping[str, Any]],
        values: Mapping[str, Any] | None = None,
    ) -> Described:
        postgres = self._postgres()
        if postgres is not None:
            return postgres.describe(definition, sql, param_specs, values)
        bound = {m.group(1): (values or {}).get(m.group(1)) for m in PLACEHOLDER.finditer(sql)}
        with self._cursor(streaming=False) as (cursor, driver):
            style = _paramstyle(driver)
            text, args = to_paramstyle(f"SELECT * FROM ({sql}) AS q WHERE 1=0", bound, style)  # noqa: S608
            try:
                cursor.execute(text, args)
                description = list(cursor.description or ())
                cursor.fetchall()  # no rows: the wrapper returns none
                types = _types(cursor, driver)
                if any(t.is_mysql and t.charset is None and MYSQL_TYPE_NAMES.get(t.type_code) in _STRINGS
                       for t in types):  # fmt: skip
                    types = _with_charsets(cursor, types, [str(d[0]) for d in description], sql, bound, style)
            except Exception as exc:
                if is_transient(exc) and not _server_refused(exc, driver):
                    raise
                raise refuse(definition, "sql", f"the database refuses the query: {_message(exc)}") from exc
        if not description:
            raise refuse(definition, "sql", "the query returns no columns; it must be a SELECT")
        return Described(tuple((str(d[0]), t) for d, t in zip(description, types, strict=True)))


#: MySQL server errors worth another try: lock wait, deadlock, too many connections, shutdown.
_MYSQL_TRANSIENT = {1040, 1053, 1205, 1213}


def _server_refused(exc: BaseException, driver: str) -> bool:
    """A MySQL server error about the query itself (codes below 2000 are the server's; 2000 and up
    are the client's: lost connections)."""
    if driver.split(".")[0] not in MYSQL_DRIVERS:
        return False
    code = getattr(exc, "errno", None) or (exc.args[0] if exc.args and isinstance(exc.args[0], int) else None)
    return isinstance(code, int) and code < 2000 and code not in _MYSQL_TRANSIENT


def _message(exc: BaseException) -> str:
    """The driver's message without the query text MySQL quotes (``near '…' at line 1``)."""
    return re.sub(r"\s*near '.*' at line \d+", "", driver_message(exc), flags=re.S)


def _new_cursor(conn: Any, driver: str, streaming: bool) -> Any:
    import importlib

    top = driver.split(".")[0]
    if top in ("MySQLdb", "pymysql") and streaming:
        # Unbuffered: rows come from the server as they are fetched (the default cursor holds all).
        return conn.cursor(importlib.import_module(f"{top}.cursors").SSCursor)
    if top == "mysql":
        # Server-side prepared statements: values bound by the protocol; rows read as fetched.
        return conn.cursor(prepared=True)
    return conn.cursor()


def _paramstyle(driver: str) -> str:
    top = driver.split(".")[0]
    if top == "mysql":
        return "qmark"  # the prepared cursor's markers
    module = sys.modules.get(top)
    return str(getattr(module, "paramstyle", "qmark"))


def to_paramstyle(sql: str, params: Mapping[str, Any], style: str) -> tuple[str, Any]:
    """Rewrite ``:name`` placeholders to the driver's paramstyle; return the values to bind.

    Drivers of the ``format``/``pyformat`` styles read ``%`` as their own mark, so a literal
    ``%`` of the query is doubled (and the values always passed, so it is undoubled)."""
    values: list[Any] = []
    named: dict[str, Any] = {}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL placeholder :{name} has no value")
        values.append(params[name])
        named[name] = params[name]
        if style == "qmark":
            return "?"
        if style == "numeric":
            return f":{len(values)}"
        if style == "named":
            return f":{name}"
        if style == "pyformat":
            return f"%({name})s"
        return "%s"

    if style in ("format", "pyformat"):
        parts = PLACEHOLDER.split(sql)
        # split() alternates text and names: escape the text, keep the names as placeholders.
        text = "".join(part.replace("%", "%%") if i % 2 == 0 else f":{part}" for i, part in enumerate(parts))
    else:
        text = sql
    rewritten = PLACEHOLDER.sub(repl, text)
    if style in ("named", "pyformat"):
        return rewritten, named
    return rewritten, tuple(values)


def _types(cursor: Any, driver: str) -> list[DbApiType]:
    """Each result column as the driver describes it."""
    top = driver.split(".")[0]
    flags = list(getattr(cursor, "description_flags", None) or ())
    types = []
    for i, d in enumerate(cursor.description or ()):
        code = d[1]
        if top == "mysql":  # mysql-connector: (…, null_ok, flags, charset); no precision
            types.append(DbApiType(code, int(d[7] or 0), int(d[8]), None, None, driver))
            continue
        flag = int(flags[i]) if i < len(flags) else 0
        precision = scale = None
        if top in ("MySQLdb", "pymysql") and MYSQL_TYPE_NAMES.get(code) == "DECIMAL" and d[3] is not None:
            # The column's display length counts a sign (if signed) and a point (if any decimals).
            scale = int(d[5] or 0)
            precision = int(d[3]) - (1 if scale > 0 else 0) - (0 if flag & 32 else 1)
        types.append(DbApiType(code, flag, None, precision, scale, driver))
    return types


def _with_charsets(
    cursor: Any, types: list[DbApiType], names: Sequence[str], sql: str, bound: Mapping[str, Any], style: str
) -> list[DbApiType]:
    """MySQLdb does not report a column's character set, and flags a ``_bin`` text column as it
    flags bytes: ask the server, on the one row of an outer join that matches nothing."""
    asks = [i for i, t in enumerate(types) if MYSQL_TYPE_NAMES.get(t.type_code) in _STRINGS]
    selects = ", ".join(f"CHARSET(q.{mysql_quote_identifier(names[i])})" for i in asks)
    text, args = to_paramstyle(f"SELECT {selects} FROM (SELECT 1 AS one) AS one LEFT JOIN ({sql}) AS q ON 1=0",  # noqa: S608
                               bound, style)  # fmt: skip
    cursor.execute(text, args)
    row = cursor.fetchall()[0]
    found = list(types)
    for i, charset in zip(asks, row, strict=True):
        name = charset.decode() if isinstance(charset, bytes) else str(charset)
        t = types[i]
        found[i] = DbApiType(t.type_code, t.flags, MYSQL_BINARY_CHARSET if name == "binary" else 0, t.precision,
                             t.scale, t.driver)  # fmt: skip
    return found


def _stream_type(t: DbApiType, column: str) -> pa.DataType:
    """The Arrow type a column streams as (the plan then converts it, exactly, to its own)."""
    import pyarrow as pa

    if not t.is_mysql:
        return pa.null()  # typed by its values, batch by batch
    kind = MYSQL_TYPE_NAMES.get(t.type_code)
    if kind == "DECIMAL" and t.precision is None:
        return pa.string()  # the Decimal's exact text; the plan's decimal parses it, checked
    if kind in _STRINGS and t.charset is None:
        return pa.null()  # text or bytes, as the driver returns it
    try:
        found = mysql_arrow_type(t)
    except Unsupported as exc:
        raise DataNotExportable(column, str(exc)) from exc
    assert found is not None
    return found


def _value_type(t: pa.DataType, values: Sequence[Any]) -> pa.DataType:
    """A column's stream type where the driver did not say: text or bytes as the driver returned
    them (MySQLdb decodes by the column's character set); bytes where no value says (UTF-8 text
    read as bytes converts back exactly, checked, to the plan's string)."""
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa

    if not pa.types.is_null(t):
        return t
    sample = next((v for v in values if v is not None), None)
    if sample is None or isinstance(sample, bytes | bytearray):
        return pa.binary()
    if isinstance(sample, str | Decimal):
        return pa.string()
    if isinstance(sample, bool):
        return pa.bool_()
    if isinstance(sample, int):
        return pa.int64()
    if isinstance(sample, float):
        return pa.float64()
    if isinstance(sample, dt.datetime):
        return pa.timestamp("us")
    if isinstance(sample, dt.date):
        return pa.date32()
    return pa.string()


def _batches(cursor: Any, schema: pa.Schema, first: Sequence[Any]) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    rows = first
    while rows:
        arrays = [_column([row[i] for row in rows], field) for i, field in enumerate(schema)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        rows = cursor.fetchmany(FETCH_ROWS)


_DAY_US = 86_400_000_000


def _column(values: list[Any], field: pa.Field) -> pa.Array:
    """One column of fetched rows as Arrow, exactly (or :class:`DataNotExportable`)."""
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa

    t = field.type
    try:
        if pa.types.is_time(t):
            micros: list[int | None] = []
            for v in values:
                if v is None:
                    micros.append(None)
                    continue
                us = (v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds if isinstance(v, dt.timedelta) \
                    else ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond  # fmt: skip
                if not 0 <= us < _DAY_US:
                    raise DataNotExportable(field.name, "holds a TIME outside 00:00:00–23:59:59.999999 (a duration), "
                                            "which a Parquet time cannot hold; cast it in the query "
                                            "(e.g. TIME_TO_SEC(x) or CAST(x AS CHAR))")  # fmt: skip
                micros.append(us)
            return pa.array(micros, pa.int64()).cast(pa.time64("us"))
        if pa.types.is_string(t):
            values = [v if v is None or isinstance(v, str) else _text(v, field.name) for v in values]
        elif pa.types.is_binary(t):
            values = [v.encode() if isinstance(v, str) else (bytes(v) if isinstance(v, bytearray) else v)
                      for v in values]  # fmt: skip
        elif pa.types.is_decimal(t):
            values = [v if v is None or isinstance(v, Decimal) else Decimal(_text(v, field.name)) for v in values]
        return pa.array(values, t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as exc:
        if isinstance(exc, DataNotExportable):
            raise
        raise DataNotExportable(field.name, f"a value does not convert exactly to {t}: {str(exc)[:200]}") from exc


def _text(value: Any, column: str) -> str:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataNotExportable(column, "holds bytes that are not UTF-8 text") from exc
    return str(value)
