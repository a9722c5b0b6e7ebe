"""What each source column becomes in the file: the type mapping and the rules for overrides.

The source decides an export's types. PostgreSQL describes every column of the query (type,
precision and scale, element type of arrays, base type of domains); SQLite gives each column's
declared type. :func:`pg_column` and :func:`sqlite_column` turn that into a :class:`ColumnSpec`:
the file's Arrow type, the SQL that selects the column, and any check of the data the type
needs before the export may start (a ``numeric`` without precision is sized from its values;
a ``NaN`` cannot be a decimal; SQLite must hold what it declares).

A definition may override a column's type; :func:`override_problem` says whether a cast keeps
every possible value (table-tested in ``tests/unit/columns/test_typemap.py``). Pure functions only: the
source is queried in :mod:`export_tx.sources`, the plan assembled in :mod:`export_tx.planning`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from export_tx.errors import Unsupported

if TYPE_CHECKING:
    import pyarrow as pa

# -- the type grammar of overrides ----------------------------------------------------------------

_SIMPLE: dict[str, str] = {
    "string": "string", "text": "string", "utf8": "string", "str": "string",
    "large_string": "large_string",
    "binary": "binary", "bytes": "binary", "large_binary": "large_binary",
    "bool": "bool_", "boolean": "bool_",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "smallint": "int16", "integer": "int32", "int": "int32", "bigint": "int64",
    "float32": "float32", "float": "float32", "real": "float32",
    "float64": "float64", "double": "float64",
    "date": "date32", "date32": "date32",
    "time": "time64_us", "time64": "time64_us", "time64[us]": "time64_us",
    "timestamp": "timestamp_us", "timestamp[us]": "timestamp_us",
    "timestamptz": "timestamp_us_utc", "timestamp[us, tz=utc]": "timestamp_us_utc",
    "uuid": "uuid", "json": "json",
}  # fmt: skip
_DECIMAL = re.compile(r"^(decimal|decimal128|decimal256|numeric)\(\s*(\d{1,2})\s*,\s*(\d{1,2})\s*\)$")
_TIMESTAMP_TZ = re.compile(r"^timestamp\[us,\s*tz=([A-Za-z0-9_+\-/:]{1,64})\]$", re.IGNORECASE)
_LIST = re.compile(r"^list<(.+)>$")
TYPE_NAMES = "string, binary, bool, int8/16/32/64, float32/64, decimal(p,s), date, time, timestamp, " \
    "timestamp[us, tz=…], timestamptz, uuid, json, list<…>"  # fmt: skip


def check_type_name(text: Any) -> None:
    """Raise ``ValueError`` unless ``text`` is a type :func:`parse_type` reads (no pyarrow import:
    definitions are checked when the DAG file is parsed)."""
    if type(text).__module__.startswith("pyarrow"):
        return
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a column type must be a type name; allowed: {TYPE_NAMES}")
    name = text.strip().lower()
    if name in _SIMPLE:
        return
    if m := _DECIMAL.match(name):
        precision, scale = int(m.group(2)), int(m.group(3))
        if not 1 <= precision <= 76 or scale > precision:
            raise ValueError(f"{text!r}: decimal precision must be 1 to 76 and scale at most the precision")
        return
    if _TIMESTAMP_TZ.match(text.strip()):
        return
    if m := _LIST.match(name):
        check_type_name(m.group(1))
        return
    raise ValueError(f"{text!r} is not a known column type; allowed: {TYPE_NAMES}")


def parse_type(text: Any) -> pa.DataType:
    """An override's type: a ``pyarrow.DataType`` or its name (``decimal(18,2)``, ``timestamptz``).

    Raises ``ValueError`` naming what is allowed.
    """
    import pyarrow as pa

    if isinstance(text, pa.DataType):
        return text
    check_type_name(text)
    name = text.strip().lower()
    if name in _SIMPLE:
        return _simple(_SIMPLE[name])
    if m := _DECIMAL.match(name):
        precision, scale = int(m.group(2)), int(m.group(3))
        return (pa.decimal256 if precision > 38 or m.group(1) == "decimal256" else pa.decimal128)(precision, scale)
    if m := _TIMESTAMP_TZ.match(text.strip()):
        tz = m.group(1)
        return pa.timestamp("us", tz="UTC" if tz.upper() == "UTC" else tz)
    m = _LIST.match(name)
    assert m is not None
    return pa.list_(parse_type(text.strip()[5:-1]))


def _simple(name: str) -> pa.DataType:
    import pyarrow as pa

    if name == "time64_us":
        return pa.time64("us")
    if name == "timestamp_us":
        return pa.timestamp("us")
    if name == "timestamp_us_utc":
        return pa.timestamp("us", tz="UTC")
    if name == "uuid":
        return pa.uuid()
    if name == "json":
        return pa.json_()
    return getattr(pa, name)()


def type_name(t: pa.DataType) -> str:
    """How a type is shown to people (and parsed back by :func:`parse_type` where it can be)."""
    import pyarrow as pa

    if isinstance(t, pa.BaseExtensionType):
        return {"arrow.uuid": "uuid", "arrow.json": "json"}.get(t.extension_name, str(t))
    return str(t)


# -- which casts keep every value -----------------------------------------------------------------

_INT_DIGITS = {8: 3, 16: 5, 32: 10, 64: 19}
#: Integers a float type holds exactly, by integer bit width.
_FLOAT_EXACT_INT_BITS = {32: 16, 64: 32}


def override_problem(source: pa.DataType, target: pa.DataType) -> str | None:
    """None when every value of ``source`` converts to ``target`` and back unchanged; otherwise
    why not. A text target is judged by the caller (PostgreSQL renders any value as its exact
    text); here text is allowed only from types whose text form Arrow writes exactly."""
    import pyarrow as pa
    import pyarrow.types as t

    if source.equals(target):
        return None
    if t.is_null(source):
        return None  # a column with no values: any type holds them
    if isinstance(source, pa.BaseExtensionType):
        if source.extension_name in ("arrow.uuid", "arrow.json") and target.equals(source.storage_type):
            return None
        if source.extension_name == "arrow.json" and t.is_string(target):
            return None
        return "only its own type or text keeps its values"
    if isinstance(target, pa.BaseExtensionType):
        return "only a column of that type can become it"
    if t.is_string(target) or t.is_large_string(target):
        if t.is_string(source) or t.is_large_string(source):
            return None
        if t.is_integer(source) or t.is_boolean(source) or t.is_decimal(source) or t.is_date(source):
            return None
        if t.is_timestamp(source) or t.is_time(source):
            return None
        return "its values have no exact text form here"
    if t.is_integer(source):
        width = source.bit_width
        if t.is_integer(target):
            if t.is_signed_integer(source) != t.is_signed_integer(target):
                return "signed and unsigned integers do not hold the same values"
            return None if target.bit_width >= width else "a narrower integer cannot hold every value"
        if t.is_floating(target):
            exact = _FLOAT_EXACT_INT_BITS.get(target.bit_width, 0)
            return None if width <= exact else f"{target} holds integers exactly only up to {exact} bits"
        if t.is_decimal(target):
            digits = _INT_DIGITS[width]
            return None if target.precision - target.scale >= digits else f"needs {digits} digits before the point"
        return "an integer cannot become that type"
    if t.is_floating(source):
        if t.is_floating(target) and target.bit_width >= source.bit_width:
            return None
        return "a float's values are kept only by a float at least as wide"
    if t.is_decimal(source):
        if t.is_decimal(target):
            if target.scale < source.scale:
                return "fewer decimal places would round values"
            if target.precision - target.scale < source.precision - source.scale:
                return "fewer digits before the point would overflow"
            return None
        if t.is_signed_integer(target) and source.scale == 0:
            digits = _INT_DIGITS[target.bit_width] - 1
            return None if source.precision <= digits else f"{target} holds only {digits} full digits"
        return "a decimal's values are kept only by a decimal at least as wide (floats round)"
    if t.is_boolean(source):
        return None if t.is_integer(target) else "a boolean becomes only an integer or text"
    if t.is_date(source):
        if t.is_timestamp(target) and target.tz is None and target.unit != "ns":
            return None
        return "a date becomes only a timestamp (s, ms or µs) or text"
    if t.is_timestamp(source):
        if t.is_timestamp(target) and target.unit == source.unit and (source.tz is None) == (target.tz is None):
            return None  # another time zone shows the same instants
        return "only a timestamp of the same unit keeps every value (a date would drop the time)"
    if t.is_time(source):
        if t.is_time(target) and target.bit_width == 64 and target.unit == "ns":
            return None
        return "a time becomes only a finer time or text"
    if t.is_string(source) or t.is_large_string(source):
        # A checked parse: each value converts exactly or the export stops naming the column.
        if t.is_integer(target) or t.is_decimal(target) or t.is_date(target) or t.is_time(target):
            return None
        if t.is_timestamp(target) and target.tz is None:
            return None
        if t.is_binary(target) or t.is_large_binary(target):
            return None
        return "text becomes only an integer, decimal, date, time or timestamp (text to float would round)"
    if t.is_binary(source) or t.is_large_binary(source):
        return None if t.is_large_binary(target) else "bytes are kept only as bytes"
    if t.is_list(source) and t.is_list(target):
        inner = override_problem(source.value_type, target.value_type)
        return None if inner is None else f"elements: {inner}"
    return "that cast cannot keep every value"


# -- the columns of a plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """An aggregate over the export's rows the plan needs (run once, with the row count)."""

    kind: str  # numeric_abs | numeric_scale | array_shape | sqlite_classes | sqlite_bool | sqlite_big_int
    sql: str


@dataclass(frozen=True)
class ColumnSpec:
    """One column of an export: where it comes from and what the file holds."""

    name: str
    #: What the source says the column is, e.g. ``numeric(38,10)`` or ``INTEGER``.
    source_type: str
    #: The file's type, IPC-serialised (``arrow_type`` reads it); ``None`` while data decides it.
    arrow: str | None
    #: The SQL that selects the column from the definition's query (``src``).
    select: str
    #: How the type was chosen, for the plan's log (None: straight from the source).
    note: str | None = None
    #: Set by an override: the type the definition asked for.
    override: str | None = None
    #: Aggregates the plan runs before any batch.
    checks: tuple[Check, ...] = ()
    #: What the data must satisfy: a kind the planner understands (see planning.finish_column).
    rule: str | None = None
    #: SQLite: the storage classes allowed, the class the driver reads, the type the values have.
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def arrow_type(self) -> pa.DataType:
        if self.arrow is None:
            raise ValueError(f"column {self.name!r} has no type yet")
        return type_from_text(self.arrow)

    def with_type(self, t: pa.DataType, note: str | None = None) -> ColumnSpec:
        return replace(self, arrow=type_to_text(t), note=note if note is not None else self.note)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnSpec:
        values = dict(data)
        values["checks"] = tuple(Check(**c) for c in values.get("checks", ()))
        return cls(**values)


def type_to_text(t: pa.DataType) -> str:
    """A type as text that round-trips exactly (extension types included): an IPC schema."""
    import pyarrow as pa

    return base64.b64encode(pa.schema([pa.field("t", t)]).serialize().to_pybytes()).decode("ascii")


def type_from_text(text: str) -> pa.DataType:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))).field("t").type


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def quote_identifier(name: str) -> str:
    """A column name as a SQL identifier (PostgreSQL and SQLite): double quotes, doubled inside."""
    if "\x00" in name:
        raise ValueError("a column name cannot hold a NUL character")
    return '"' + name.replace('"', '""') + '"'


# -- PostgreSQL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL type as the catalog describes it (domains already resolved to their base)."""

    name: str  # pg_type.typname: int4, _int4, numeric, mood, …
    display: str  # format_type(oid, typmod): integer[], numeric(38,10), timestamp with time zone
    typtype: str  # b base, e enum, c composite, r range, m multirange, p pseudo, d domain
    typmod: int = -1
    element: PgType | None = None  # arrays
    #: The type the column is read as, when the driver would not know it (arrays of a domain).
    cast_to: str | None = None


INTERVAL_FIELDS = (("months", "int32"), ("days", "int32"), ("microseconds", "int64"))

# Types whose values PostgreSQL's own text form states exactly and that are not numbers, times
# or ids: selected as text.
_PG_AS_TEXT = {"inet", "cidr", "macaddr", "macaddr8", "xml", "bit", "varbit", "citext", "tsvector", "tsquery"}
_PG_STRINGS = {"text", "varchar", "bpchar", "name", "char"}


def interval_type() -> pa.DataType:
    """PostgreSQL ``interval`` keeps months, days and microseconds apart (a month is not a fixed
    number of days), and Parquet has no such type: a struct of the three integers."""
    import pyarrow as pa

    return pa.struct([pa.field(name, getattr(pa, kind)()) for name, kind in INTERVAL_FIELDS])


def numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of ``numeric(p,s)``; None for a ``numeric`` without them."""
    if typmod < 4:
        return None
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15 allows a negative scale
    return precision, scale


def decimal_for(precision: int, scale: int) -> pa.DataType:
    """The narrowest Arrow decimal for ``numeric(precision, scale)``; Unsupported past 76 digits."""
    import pyarrow as pa

    if scale < 0:  # numeric(5,-2) holds multiples of 100: whole numbers of precision - scale digits
        precision, scale = precision - scale, 0
    precision = max(precision, scale, 1)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    raise Unsupported(f"{precision} digits are more than a Parquet decimal holds (76)")


def pg_scalar(pg: PgType) -> tuple[pa.DataType | None, str | None, str | None]:
    """(Arrow type or None when data decides, SQL cast or None, note) of a non-array type."""
    import pyarrow as pa

    name = pg.name
    fixed: dict[str, pa.DataType] = {
        "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(),
        "float4": pa.float32(), "float8": pa.float64(), "bool": pa.bool_(),
        "bytea": pa.binary(), "date": pa.date32(), "time": pa.time64("us"),
        "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
        "uuid": pa.uuid(), "json": pa.json_(), "jsonb": pa.json_(),
    }  # fmt: skip
    if name in fixed:
        return fixed[name], None, None
    if name in _PG_STRINGS:
        return pa.string(), None, None
    if name == "oid":  # unsigned 32-bit: the driver would read it as a signed int32
        return pa.int64(), "bigint", None
    if name == "interval":
        return interval_type(), None, "interval as (months, days, microseconds)"
    if name == "numeric":
        ps = numeric_typmod(pg.typmod)
        if ps is None:
            return None, None, None  # sized from the data at planning
        return decimal_for(*ps), None, None
    if pg.typtype == "e":
        return pa.string(), "text", "enum labels as text"
    if name in _PG_AS_TEXT:
        return pa.string(), "text", f"{name} as its text form"
    hint = "declare it as string in the definition's columns (PostgreSQL's exact text), or convert it in the query"
    if name in ("timetz", "money"):
        reason = {"timetz": "a time with an offset", "money": "a currency amount whose decimals depend on locale"}
        raise Unsupported(f"{pg.display} is {reason[name]}, which no Parquet type holds exactly; {hint}")
    raise Unsupported(f"{pg.display} has no exact Parquet type here; {hint}")


def pg_column(name: str, pg: PgType) -> ColumnSpec:
    """The default mapping of a PostgreSQL result column. Raises :class:`Unsupported`."""
    import pyarrow as pa

    column = quote_identifier(name)
    if pg.element is not None:
        element = pg.element
        # numeric(8,2)[]: the column's typmod is its elements'; an array of a domain: the domain's.
        typmod = element.typmod if element.typmod != -1 else (pg.typmod if element.name == "numeric" else -1)
        inner, cast, note = pg_scalar(replace(element, typmod=typmod))
        if inner is None:
            raise Unsupported(
                f"{pg.display}: arrays of numeric without precision cannot be sized; declare the column "
                "as string, or cast it in the query (e.g. CAST(x AS numeric(18,4)[]))"
            )
        checks = (Check("array_shape", f"bool_or(array_ndims({column}) > 1 OR array_lower({column}, 1) <> 1)"),)
        if cast:
            select = f"CAST({column} AS {cast}[]) AS {column}"
        elif pg.cast_to:
            select = f"CAST({column} AS {pg.cast_to}) AS {column}"
        else:
            select = column
        return ColumnSpec(name, pg.display, type_to_text(pa.list_(inner)), select, note, checks=checks,
                          rule="array_shape")  # fmt: skip
    arrow, cast, note = pg_scalar(pg)
    select = f"CAST({column} AS {cast}) AS {column}" if cast else column
    if pg.name == "numeric":
        numeric_checks = [Check("numeric_abs", f"max(abs({column}))")]
        if arrow is None:
            numeric_checks.append(Check("numeric_scale", f"max(scale({column}))"))
        return ColumnSpec(name, pg.display, None if arrow is None else type_to_text(arrow), select, note,
                          checks=tuple(numeric_checks), rule="numeric")  # fmt: skip
    assert arrow is not None
    return ColumnSpec(name, pg.display, type_to_text(arrow), select, note)


def pg_text_override(spec: ColumnSpec) -> ColumnSpec:
    """Any PostgreSQL value asked for as text: PostgreSQL renders it (exact, canonical form)."""
    import pyarrow as pa

    column = quote_identifier(spec.name)
    return replace(spec, arrow=type_to_text(pa.string()), select=f"CAST({column} AS text) AS {column}",
                   checks=(), rule=None, note="as PostgreSQL's text form",
                   override=type_to_text(pa.string()))  # fmt: skip


# -- SQLite ---------------------------------------------------------------------------------------

_BIG_INT = 2**53  # float64 holds every integer up to this


def sqlite_affinity_type(declared: str) -> tuple[pa.DataType | None, set[str], str | None]:
    """(Arrow type or None: the data decides, storage classes allowed, note) for a declared type.

    SQLite's affinity rules (https://sqlite.org/datatype3.html §3.1), refined for the names that
    mean booleans, dates and timestamps (which SQLite keeps as 0/1 and ISO text).
    """
    import pyarrow as pa

    d = declared.strip().upper()
    base = d.split("(")[0].strip()
    if not d:
        return None, set(), "no declared type: typed by its values"
    if base in ("BOOLEAN", "BOOL"):
        return pa.bool_(), {"integer"}, None
    if "INT" in d:
        return pa.int64(), {"integer"}, None
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return pa.string(), {"text"}, None
    if "BLOB" in d:
        return pa.binary(), {"blob"}, None
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return pa.float64(), {"real", "integer"}, None
    if base in ("DATETIME", "TIMESTAMP"):
        return pa.timestamp("us"), {"text"}, "ISO text read as a timestamp"
    if base == "DATE":
        return pa.date32(), {"text"}, "ISO text read as a date"
    if base in ("NUMERIC", "DECIMAL"):
        return pa.float64(), {"real", "integer"}, "SQLite keeps NUMERIC as REAL or INTEGER"
    return None, set(), f"declared {declared}, which SQLite does not type: typed by its values"


def sqlite_column(name: str, declared: str) -> ColumnSpec:
    import pyarrow as pa

    column = quote_identifier(name)
    arrow, allowed, note = sqlite_affinity_type(declared)
    checks = [Check("sqlite_classes", f"group_concat(DISTINCT typeof({column}))")]
    if arrow is not None and pa.types.is_boolean(arrow):
        checks.append(Check("sqlite_bool", f"sum(typeof({column}) = 'integer' AND {column} NOT IN (0, 1))"))
    if arrow is None or pa.types.is_floating(arrow):
        big = f"({column} > {_BIG_INT} OR {column} < -{_BIG_INT})"
        checks.append(Check("sqlite_big_int", f"sum(typeof({column}) = 'integer' AND {big})"))
    return ColumnSpec(
        name,
        declared.strip() or "(none)",
        None if arrow is None else type_to_text(arrow),
        column,
        note,
        checks=tuple(checks),
        rule="sqlite",
        detail={"allowed": sorted(allowed)},
    )


def sqlite_type_for_classes(classes: set[str]) -> tuple[pa.DataType | None, str | None]:
    """The type of an undeclared column from the storage classes of its values (None: mixed)."""
    import pyarrow as pa

    kinds = classes - {"null"}
    if not kinds:
        return pa.null(), "no values to type it by"
    if kinds == {"integer"}:
        return pa.int64(), None
    if kinds <= {"integer", "real"}:
        return pa.float64(), None
    if kinds == {"text"}:
        return pa.string(), None
    if kinds == {"blob"}:
        return pa.binary(), None
    return None, None


# -- DB-API sources (MySQL / MariaDB) -------------------------------------------------------------


@dataclass(frozen=True)
class DbApiType:
    """A result column as a DB-API driver describes it (``cursor.description``, plus what the
    MySQL drivers add: the column's flags and character set)."""

    #: ``cursor.description``'s type code (MySQL: the protocol's field type).
    type_code: Any
    #: MySQL column flags (unsigned, binary, enum, set); 0 where the driver does not say.
    flags: int = 0
    #: MySQL character set number (63: binary); None where the driver does not say.
    charset: int | None = None
    #: DECIMAL precision and scale, fractional digits of times; None where the driver does not say.
    precision: int | None = None
    scale: int | None = None
    #: The module of the driver's connection (``MySQLdb``, ``mysql.connector``, …).
    driver: str = ""

    @property
    def display(self) -> str:
        name = MYSQL_TYPE_NAMES.get(self.type_code, f"type code {self.type_code}") if self.is_mysql else \
            f"{self.driver} type {self.type_code}"  # fmt: skip
        if name == "DECIMAL" and self.precision is not None:
            name = f"DECIMAL({self.precision},{self.scale or 0})"
        if self.is_mysql and self.flags & MYSQL_UNSIGNED and name in _MYSQL_INTS:
            name += " UNSIGNED"
        if self.is_mysql and name in ("VARCHAR", "CHAR", "TEXT") and self.charset == MYSQL_BINARY_CHARSET:
            name = {"VARCHAR": "VARBINARY", "CHAR": "BINARY", "TEXT": "BLOB"}[name]
        return name

    @property
    def is_mysql(self) -> bool:
        return self.driver.split(".")[0] in MYSQL_DRIVERS


MYSQL_DRIVERS = ("MySQLdb", "mysql", "pymysql")
MYSQL_UNSIGNED, MYSQL_BINARY_FLAG, MYSQL_BINARY_CHARSET = 32, 128, 63
#: MySQL protocol field types (``include/mysql_com.h``): the SQL type each stands for.
MYSQL_TYPE_NAMES: dict[int, str] = {
    0: "DECIMAL", 1: "TINYINT", 2: "SMALLINT", 3: "INT", 4: "FLOAT", 5: "DOUBLE", 6: "NULL", 7: "TIMESTAMP",
    8: "BIGINT", 9: "MEDIUMINT", 10: "DATE", 11: "TIME", 12: "DATETIME", 13: "YEAR", 14: "DATE", 15: "VARCHAR",
    16: "BIT", 245: "JSON", 246: "DECIMAL", 247: "ENUM", 248: "SET", 249: "TEXT", 250: "TEXT", 251: "TEXT",
    252: "TEXT", 253: "VARCHAR", 254: "CHAR", 255: "GEOMETRY",
}  # fmt: skip
_MYSQL_INTS = {"TINYINT": 8, "SMALLINT": 16, "MEDIUMINT": 32, "INT": 32, "BIGINT": 64}
_MYSQL_HINT = "cast it in the query to a type that keeps its values (e.g. CAST(x AS CHAR) for its text)"


def mysql_arrow_type(t: DbApiType) -> pa.DataType | None:
    """The exact Arrow type of a MySQL/MariaDB result column; None where the data decides (a
    DECIMAL whose precision the driver does not report: sized from its values, as PostgreSQL's
    ``numeric`` without precision). Raises :class:`Unsupported` for a type no file type keeps."""
    import pyarrow as pa

    name = MYSQL_TYPE_NAMES.get(t.type_code)
    if name in _MYSQL_INTS:
        bits = _MYSQL_INTS[name]
        return getattr(pa, f"{'u' if t.flags & MYSQL_UNSIGNED else ''}int{bits}")()
    if name == "YEAR":
        return pa.int16()
    if name == "DECIMAL":
        if t.precision is None:
            return None
        return decimal_for(t.precision, t.scale or 0)
    fixed = {"FLOAT": pa.float32(), "DOUBLE": pa.float64(), "DATE": pa.date32(), "DATETIME": pa.timestamp("us"),
             # TIMESTAMP is an instant: the session reads it in UTC (time_zone '+00:00').
             "TIMESTAMP": pa.timestamp("us", tz="UTC"), "TIME": pa.time64("us"), "JSON": pa.string(),
             "ENUM": pa.string(), "SET": pa.string(), "NULL": pa.null()}  # fmt: skip
    if name in fixed:
        return fixed[name]
    if name in ("VARCHAR", "CHAR", "TEXT"):
        if t.charset is None:
            raise Unsupported(f"{name}: the driver does not say whether it holds text or bytes; {_MYSQL_HINT}")
        return pa.binary() if t.charset == MYSQL_BINARY_CHARSET else pa.string()
    if name == "BIT":
        raise Unsupported(f"BIT has no exact Parquet type here; {_MYSQL_HINT}, or CAST(x AS UNSIGNED) for its number")
    raise Unsupported(f"{t.display} has no exact Parquet type here; {_MYSQL_HINT}")


def mysql_quote_identifier(name: str) -> str:
    """A column name as a MySQL/MariaDB identifier: backticks, doubled inside."""
    if "\x00" in name:
        raise ValueError("a column name cannot hold a NUL character")
    return "`" + name.replace("`", "``") + "`"


def dbapi_column(name: str, t: DbApiType) -> ColumnSpec:
    """The default mapping of a DB-API result column. Raises :class:`Unsupported` (the message
    says what to do) for a type that cannot be kept exactly, or a driver this product does not
    map (only MySQL/MariaDB's drivers are mapped)."""
    if not t.is_mysql:
        raise Unsupported(f"{t.display}: the types of this driver's columns are not mapped (MySQL/MariaDB's are); "
                          "read it through a connection type this product maps")  # fmt: skip
    arrow = mysql_arrow_type(t)
    column = mysql_quote_identifier(name)
    kind = MYSQL_TYPE_NAMES.get(t.type_code)
    checks: list[Check] = []
    rule = None
    if kind == "DECIMAL":
        rule = "numeric"
        if arrow is None:
            text = f"CAST({column} AS CHAR)"
            checks = [Check("numeric_abs", f"MAX(ABS({column}))"),
                      Check("numeric_scale", f"MAX(CASE WHEN INSTR({text}, '.') > 0 THEN "
                                             f"LENGTH({text}) - INSTR({text}, '.') ELSE 0 END)")]  # fmt: skip
    elif kind in ("DATE", "DATETIME", "TIMESTAMP"):
        # A zero date ('0000-00-00', or a zero month or day) reads as NULL through the drivers:
        # refused, never exported as a NULL it is not.
        rule = "mysql_zero_date"
        checks = [Check("mysql_zero_date", f"SUM(CASE WHEN {column} IS NOT NULL AND (MONTH({column}) = 0 OR "
                                           f"DAYOFMONTH({column}) = 0) THEN 1 ELSE 0 END)")]  # fmt: skip
    return ColumnSpec(name, t.display, None if arrow is None else type_to_text(arrow), column, None,
                      checks=tuple(checks), rule=rule)  # fmt: skip
