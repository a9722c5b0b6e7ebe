"""Plan an export once: its columns and types from the source, its rows, its batches.

**Types.** The source describes the definition's query (no row is read): each column's type
decides the file's type (:mod:`export_tx.columns.typemap`); the definition's ``columns`` override
named columns where every value survives the cast. Checks the types need (a ``numeric``
without precision is sized from its values; NaN, infinity or a multi-dimensional array cannot
be held exactly) run in the same pass that counts the rows. Any problem refuses the export
before a batch runs, naming the column.

**Batches.** The source numbers its rows in key order (``ROW_NUMBER()`` works on SQLite and
PostgreSQL) and every ``batch_size``-th key starts a batch; batch ``i`` is ``lo_i <= key <
lo_{i+1}``. With a unique key every batch but the last holds exactly ``batch_size`` rows, however
skewed or gappy the keys. An integer key on PostgreSQL is split from a histogram of its range
instead: its range from the key's index, then one grouping pass that also counts the rows and
runs the column checks (no serial window pass, no separate count). The pure functions here are
table-tested; :func:`plan_export` runs the SQL.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from export_tx.columns.typemap import (
    ColumnSpec,
    dbapi_column,
    decimal_for,
    mysql_quote_identifier,
    override_problem,
    pg_column,
    pg_text_override,
    quote_identifier,
    schema_from_text,
    schema_to_text,
    sqlite_column,
    sqlite_type_for_classes,
    type_from_text,
    type_name,
    type_to_text,
)
from export_tx.config import BATCH_ROWS_AUTO_MIN, BATCH_SIZE_MAX, BATCH_SIZE_MIN
from export_tx.definition import ExportDefinition
from export_tx.errors import (
    DataNotExportable,
    DefinitionInvalid,
    ExportError,
    FieldError,
    TooManyRows,
    Unsupported,
    sqlstate,
)
from export_tx.sources import (
    DbApiSource,
    Described,
    PgBinding,
    PostgresSource,
    fetch_all,
)
from export_tx.sources.base import time_limit
from export_tx.store import PlannedBatch

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pyarrow as pa


# -- the columns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaPlan:
    """The columns of one transaction, fixed at planning and stored with its batches: every
    batch, the merge and a zero-row result use exactly these types."""

    columns: tuple[ColumnSpec, ...]
    key: ColumnSpec
    #: How the planner selects the key for the batch bounds it stores (exact text where needed).
    key_sql: str
    dialect: str
    binding: PgBinding | None
    #: The file's schema after the definition's transform (IPC, base64).
    output: str
    notes: tuple[str, ...] = ()
    #: What the definition said when this was planned (:func:`definition_fingerprint`); "" before.
    definition_sha: str = ""

    def source_schema(self) -> pa.Schema:
        """The columns as the source and overrides make them (before the transform)."""
        import pyarrow as pa

        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    def output_schema(self) -> pa.Schema:
        return schema_from_text(self.output)

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": [c.as_json() for c in self.columns],
            "key": self.key.name,
            "key_sql": self.key_sql,
            "dialect": self.dialect,
            "binding": None
            if self.binding is None
            else {"occurrences": list(self.binding.occurrences), "key_type": self.binding.key_type},
            "output": self.output,
            "notes": list(self.notes),
            "definition_sha": self.definition_sha,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchemaPlan:
        columns = tuple(ColumnSpec.from_json(c) for c in data["columns"])
        binding = data.get("binding")
        return cls(
            columns=columns,
            key=next(c for c in columns if c.name == data["key"]),
            key_sql=data["key_sql"],
            dialect=data["dialect"],
            binding=None if binding is None else PgBinding(tuple(binding["occurrences"]), binding["key_type"]),
            output=data["output"],
            notes=tuple(data.get("notes", ())),
            definition_sha=str(data.get("definition_sha", "")),
        )

    def describe(self) -> list[dict[str, Any]]:
        """Column by column: source type → file type (after the transform), and why."""
        out = self.output_schema()
        by_name = {c.name: c for c in self.columns}
        described = []
        for f in out:
            spec = by_name.get(f.name)
            described.append(
                {
                    "name": f.name,
                    "source_type": spec.source_type if spec else None,
                    "type": type_name(f.type),
                    "note": (spec.note if spec else "added by the definition's transform"),
                }
            )
        return described


def quote(name: str, dialect: str) -> str:
    """A column name as an identifier of the source's dialect (MySQL: backticks)."""
    return mysql_quote_identifier(name) if dialect == "mysql" else quote_identifier(name)


def _is_postgres(source: Any) -> bool:
    return isinstance(source, PostgresSource) or (isinstance(source, DbApiSource) and source.dialect == "postgresql")


def describe(definition: ExportDefinition, values: Mapping[str, Any] | None = None) -> Described:
    """Ask the source what the definition's query returns (nothing is read); on PostgreSQL also
    check that each of ``values`` is a valid value of its placeholder's type."""
    return definition.source.describe(definition.name, definition.sql, definition.params, values)


def _shown(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def resolve_columns(definition: ExportDefinition, described: Described) -> tuple[list[ColumnSpec], list[FieldError]]:
    """Each column's spec from the source's type and the definition's overrides; and every
    problem, each naming its column (``columns.amount``) — none of them is guessed around."""
    postgres = _is_postgres(definition.source)
    dbapi = not postgres and isinstance(definition.source, DbApiSource)
    overrides = definition.overrides()
    names = [name for name, _ in described.columns]
    problems: list[FieldError] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(FieldError("sql", f"the query returns more than one column named {name!r}; name each once"))
        seen.add(name)
    field_of = "schema" if definition.schema is not None else "columns"
    for name in overrides:
        if name not in seen:
            problems.append(FieldError(f"{field_of}.{name}", f"the query returns no column {name!r}; "
                                       f"it returns: {_shown(names)}"))  # fmt: skip
    if definition.schema is not None:
        missing = [n for n in names if n not in overrides]
        if missing:
            problems.append(FieldError("schema", (
                f"lists {len(names) - len(missing)} of the {len(names)} columns the query returns, so the others "
                f"would have no declared type (missing: {_shown(missing)}); list every column, or declare only "
                "the types to change in columns")))  # fmt: skip
    specs: list[ColumnSpec] = []
    for name, kind in described.columns:
        target = overrides.get(name)
        try:
            if postgres:
                spec = pg_column(name, kind)
            else:
                spec = dbapi_column(name, kind) if dbapi else sqlite_column(name, kind)
        except Unsupported as exc:
            if postgres and target is not None and _is_text(target):
                specs.append(pg_text_override(pg_column_for_text(name, kind)))
            else:
                problems.append(FieldError(f"columns.{name}", str(exc)))
            continue
        if target is None:
            specs.append(spec)
            continue
        if postgres and _is_text(target):
            specs.append(pg_text_override(spec))
            continue
        problem = None if spec.arrow is None else override_problem(spec.arrow_type, target)
        if problem is None and (spec.arrow is None or spec.rule == "sqlite"):
            # The data decides (or, on SQLite, confirms) the source type: the override is checked then.
            specs.append(replace(spec, override=type_to_text(target)))
            continue
        if problem:
            problems.append(FieldError(f"columns.{name}", _lossy(spec, type_name(spec.arrow_type), target, problem)))
            continue
        specs.append(
            replace(spec.with_type(target), override=type_to_text(target), note=f"declared {type_name(target)}")
        )
    return specs, problems


def pg_column_for_text(name: str, kind: Any) -> ColumnSpec:
    return ColumnSpec(name, kind.display, None, quote_identifier(name))


def _is_text(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return bool(pt.is_string(t) or pt.is_large_string(t))


def _lossy(spec: ColumnSpec, source: str, target: pa.DataType, why: str) -> str:
    return (
        f"{spec.source_type} ({source}) cannot become {type_name(target)} without changing values: {why}; "
        "declare a type that keeps every value, or string for the source's exact text"
    )


def finish_column(spec: ColumnSpec, results: Mapping[str, Any]) -> tuple[ColumnSpec, str | None]:
    """Apply what the data says (``results`` of the spec's checks by kind) to a column: decide a
    type the source leaves open, or refuse values the type cannot hold. Returns the final spec
    and a problem (None: none)."""
    import pyarrow as pa

    target = None if spec.override is None else type_from_text(spec.override)
    if spec.rule == "numeric":
        text = results.get("numeric_abs")
        largest = _decimal(text)
        if largest is not None and largest.is_nan():
            return spec, "holds NaN, which a Parquet decimal cannot hold; declare it as string (its exact text)"
        if largest is not None and largest.is_infinite():
            return spec, "holds Infinity, which a Parquet decimal cannot hold; declare it as string (its exact text)"
        if spec.arrow is not None:
            return spec, None
        scale = int(results.get("numeric_scale") or 0)
        digits = _integer_digits(largest)
        if target is not None:
            if not pa.types.is_decimal(target):
                return spec, _lossy(spec, "numeric", target, "a decimal's values are kept only by a decimal")
            if scale > target.scale or digits > target.precision - target.scale:
                return spec, (f"its values need {digits} digits before the point and {scale} after, more than "
                              f"{type_name(target)} holds")  # fmt: skip
            return replace(spec.with_type(target), note=f"declared {type_name(target)}"), None
        try:
            chosen = decimal_for(38, scale) if digits + scale <= 38 else decimal_for(76, scale)
        except Unsupported as exc:
            return spec, str(exc)
        if digits + scale > 76:
            return spec, (f"its values need {digits + scale} digits, more than a Parquet decimal holds (76); "
                          "declare it as string (its exact text)")  # fmt: skip
        sized = "no values to size it by" if largest is None else f"the most decimal places its values have: {scale}"
        note = f"numeric without precision: {type_name(chosen)} ({sized}; declare columns.{spec.name} to fix it)"
        return spec.with_type(chosen, note), None
    if spec.rule == "array_shape":
        if results.get("array_shape"):
            return spec, ("holds multi-dimensional arrays or arrays not starting at index 1, which a Parquet list "
                          "cannot hold exactly; declare it as string (PostgreSQL's text form)")  # fmt: skip
        return spec, None
    if spec.rule == "sqlite":
        return _finish_sqlite(spec, results, target)
    if spec.rule == "mysql_zero_date" and int(results.get("mysql_zero_date") or 0):
        zeros = int(results["mysql_zero_date"])
        return spec, (f"holds {zeros:,} zero dates ('0000-00-00' or a zero month or day), which no file date "
                      "holds; convert them in the query (e.g. NULLIF, or CAST(x AS CHAR))")  # fmt: skip
    return spec, None


def _finish_sqlite(
    spec: ColumnSpec, results: Mapping[str, Any], target: pa.DataType | None
) -> tuple[ColumnSpec, str | None]:
    import pyarrow as pa

    classes = {c for c in str(results.get("sqlite_classes") or "").split(",") if c} - {"null"}
    allowed = set(spec.detail.get("allowed", ()))
    if allowed:
        natural = spec.arrow_type
        extra = sorted(classes - allowed)
        if extra:
            return spec, (f"is declared {spec.source_type} but holds {' and '.join(extra)} values; fix the data, "
                          "or declare its type in the definition's columns")  # fmt: skip
    else:
        natural, _ = sqlite_type_for_classes(classes)
        if natural is None:
            return spec, (f"has no declared type and holds {' and '.join(sorted(classes))} values; declare its "
                          "type in the definition's columns")  # fmt: skip
    if int(results.get("sqlite_bool") or 0):
        return spec, f"is declared {spec.source_type} but holds integers other than 0 and 1"
    if int(results.get("sqlite_big_int") or 0) and pa.types.is_floating(natural):
        return spec, ("holds integers beyond 2^53, which float64 cannot hold exactly; declare it as int64 "
                      "in the definition's columns")  # fmt: skip
    read = _storage_class(natural)
    detail = {**spec.detail, "read": read, "natural": type_to_text(natural)}
    if target is None:
        note = spec.note
        if not allowed:
            note = f"no declared type: {type_name(natural)} from its values" if classes else spec.note
        return replace(spec.with_type(natural, note), detail=detail), None
    problem = override_problem(natural, target)
    if problem:
        return spec, _lossy(spec, type_name(natural), target, problem)
    return replace(spec.with_type(target, f"declared {type_name(target)}"), detail=detail), None


def _storage_class(t: pa.DataType) -> str:
    import pyarrow.types as pt

    if pt.is_null(t):
        return "null"
    if pt.is_integer(t) or pt.is_boolean(t):
        return "integer"
    if pt.is_floating(t):
        return "real"
    if pt.is_binary(t) or pt.is_large_binary(t):
        return "blob"
    return "text"


def _decimal(text: Any) -> Decimal | None:
    if text is None:
        return None
    raw = str(text).strip().lower()
    if raw in ("nan", "+nan", "-nan"):
        return Decimal("NaN")
    if raw in ("inf", "+inf", "-inf", "infinity", "-infinity", "+infinity"):
        return Decimal("Infinity")
    try:
        return Decimal(raw)
    except InvalidOperation:
        return None


def _integer_digits(value: Decimal | None) -> int:
    if value is None or value.is_nan() or value.is_infinite():
        return 0
    whole = abs(int(value))
    return len(str(whole)) if whole else 0


# -- the batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    batches: list[PlannedBatch]
    total_rows: int
    batch_size: int
    note: str
    schema: SchemaPlan


def choose_batch_size(total_rows: int, requested: int | None, max_batches: int, slots: int = 1) -> int:
    """Rows per batch: the requested size, grown just enough that the plan stays within
    ``max_batches``; without a request, one batch per slot (``slots`` batch tasks run at once),
    never below :data:`BATCH_ROWS_AUTO_MIN` rows (a task's start-up would outweigh its work) nor
    above ``BATCH_SIZE_MAX`` (then the slots take several rounds)."""
    if requested is None:
        batches = max(1, min(slots, total_rows // BATCH_ROWS_AUTO_MIN))
        requested = min(max(math.ceil(total_rows / batches), BATCH_SIZE_MIN), BATCH_SIZE_MAX)
    if total_rows <= 0:
        return requested
    if math.ceil(total_rows / requested) <= max_batches:
        return requested
    return math.ceil(total_rows / max_batches)


def batches_from_starts(starts: Sequence[tuple[Any, int]], total_rows: int) -> list[PlannedBatch]:
    """Build half-open key ranges from ``(first key, its row number)`` pairs in key order.

    Repeated keys (a non-unique key column) never straddle two batches: a start key equal
    to the previous one is dropped, so its rows stay in one range.
    """
    kept: list[tuple[Any, int]] = []
    for key, row_number in starts:
        if kept and key == kept[-1][0]:
            continue
        kept.append((key, row_number))
    plan: list[PlannedBatch] = []
    for i, (key, row_number) in enumerate(kept):
        last = i == len(kept) - 1
        next_row = total_rows + 1 if last else kept[i + 1][1]
        plan.append(
            PlannedBatch(
                batch_no=i + 1,
                lo=key,
                hi=None if last else kept[i + 1][0],
                planned_rows=next_row - row_number,
            )
        )
    return plan


# The SQL below wraps the definition's reviewed query; column names are quoted identifiers taken
# from the source's own description, and every user value is a bound parameter.


def count_sql(
    definition: ExportDefinition, columns: Sequence[ColumnSpec], key: str, first_key: str | None,
    last_key: str | None = None, dialect: str = "postgresql",
) -> tuple[str, list[str]]:  # fmt: skip
    """Rows, rows with a key, the first (and for an integer key the last) key — SQL over the key —
    and every column check, in one pass; returns (sql, check aliases)."""
    parts = [f"COUNT(*) AS n, COUNT({quote(key, dialect)}) AS n_key"]
    if first_key is not None:
        parts.append(f"{first_key} AS k_min")
    if last_key is not None:
        parts.append(f"{last_key} AS k_max")
    aliases = []
    for i, spec in enumerate(columns):
        for j, check in enumerate(spec.checks):
            alias = f"c{i}_{j}"
            parts.append(f"{check.sql} AS {alias}")
            aliases.append(alias)
    return f"SELECT {', '.join(parts)} FROM ({definition.sql}) AS src", aliases  # noqa: S608


def starts_sql(definition: ExportDefinition, schema: SchemaPlan) -> str:
    key = quote(schema.key.name, schema.dialect)
    # MySQL's drivers read "%" as their own mark: MOD() there (SQLite has no MOD()).
    every = "MOD(rn - 1, :export_tx_batch_size)" if schema.dialect == "mysql" else "(rn - 1) % :export_tx_batch_size"
    return (
        f"SELECT k, rn FROM (SELECT {schema.key_sql} AS k, ROW_NUMBER() OVER (ORDER BY {key}) AS rn "  # noqa: S608
        f"FROM ({definition.sql}) AS src) AS numbered "
        f"WHERE {every} = 0 ORDER BY rn"
    )


def batch_sql(definition: ExportDefinition, schema: SchemaPlan, bounded_above: bool, limit: bool = False) -> str:
    """The definition's query restricted to one batch's key range, in key order, each column
    selected as the plan says. On SQLite a typed first row leads (the driver types columns by
    their first values); it is dropped before any data is written."""
    key = quote(schema.key.name, schema.dialect)
    upper = f" AND {key} < :export_tx_hi" if bounded_above else ""
    where = f"WHERE {key} >= :export_tx_lo{upper}"
    tail = ""
    if limit:  # rows of data: SQLite's typed first row comes on top
        tail = " LIMIT :export_tx_limit + 1" if schema.dialect == "sqlite" else " LIMIT :export_tx_limit"
    if schema.dialect == "sqlite":
        sentinel = ", ".join(f"{sqlite_sentinel_value(c)} AS {quote_identifier(c.name)}" for c in schema.columns)
        selects = ", ".join(c.select for c in schema.columns)
        key_position = 2 + [c.name for c in schema.columns].index(schema.key.name)
        return (
            f'SELECT 0 AS "__export_tx_first", {sentinel} '  # noqa: S608
            f"UNION ALL SELECT 1, {selects} FROM ({definition.sql}) AS src {where} "
            f"ORDER BY 1, {key_position}{tail}"
        )
    selects = ", ".join(c.select for c in schema.columns)
    return f"SELECT {selects} FROM ({definition.sql}) AS src {where} ORDER BY {key}{tail}"  # noqa: S608


def sqlite_sentinel_value(spec: ColumnSpec) -> str:
    read = spec.detail.get("read", "null")
    return {"integer": "0", "real": "0.0", "text": "''", "blob": "x''"}.get(read, "NULL")


def _run_checks(
    definition: ExportDefinition, values: Mapping[str, Any], specs: Sequence[ColumnSpec], key: str,
    first_key: str | None, last_key: str | None, binding: PgBinding | None,
) -> tuple[int, int, Any, Any, list[dict[str, Any]]]:  # fmt: skip
    sql, aliases = count_sql(definition, specs, key, first_key, last_key, definition.source.dialect)
    row = fetch_all(definition.source, sql, values, binding).to_pylist()[0]
    results: list[dict[str, Any]] = []
    position = 0
    for spec in specs:
        found: dict[str, Any] = {}
        for check in spec.checks:
            found[check.kind] = row[aliases[position]]
            position += 1
        results.append(found)
    return int(row["n"]), int(row["n_key"]), row.get("k_min", _UNKNOWN), row.get("k_max"), results


_KEY_TYPES = "an integer, text, date, timestamp, uuid or decimal column"


def _check_key(definition: ExportDefinition, specs: Sequence[ColumnSpec]) -> ColumnSpec:
    import pyarrow as pa
    import pyarrow.types as pt

    key = next((s for s in specs if s.name == definition.key_column), None)
    if key is None:
        raise DefinitionInvalid(definition.name, [FieldError(
            "key_column", f"{definition.key_column!r} is not a column the query returns")])  # fmt: skip
    if key.arrow is not None:
        t = key.arrow_type
        ok = (pt.is_integer(t) or pt.is_string(t) or pt.is_date(t) or pt.is_timestamp(t) or pt.is_decimal(t)
              or (isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.uuid"))  # fmt: skip
        if not ok:
            message = f"{definition.key_column!r} is {key.source_type}; the key must be {_KEY_TYPES}"
            raise DefinitionInvalid(definition.name, [FieldError("key_column", message)])
    return key


#: A first key the counting pass could not find.
_UNKNOWN = object()


@dataclass(frozen=True)
class Counted:
    """What the planning pass found: the rows, the rows with a key, the first key (as the plan
    stores bounds)."""

    rows: int
    with_key: int
    #: :data:`_UNKNOWN` where the source has no MIN for the key's type (PostgreSQL's uuid).
    first_key: Any
    #: The last key of an integer key on PostgreSQL (None otherwise): the range a histogram splits.
    last_key: int | None = None
    #: The key's histogram, counted in the same pass (an integer key on PostgreSQL): ``(bucket,
    #: rows)`` in key order, as :func:`batches_from_histogram` reads it.
    histogram: tuple[tuple[int, int], ...] = ()
    #: The histogram's bucket width (0: no histogram).
    width: int = 0


def plan_schema(
    definition: ExportDefinition, params: Mapping[str, Any], one_batch: Callable[[int], bool] | None = None
) -> tuple[SchemaPlan, Counted]:
    """Describe, resolve and check the columns; count the rows (one pass over the query).
    ``one_batch(rows)``: whether that many rows make one batch (then the plan needs no histogram).

    Raises :class:`DefinitionInvalid` (the definition), :class:`RequestInvalid` (a parameter
    value the query's type cannot take) or :class:`DataNotExportable` (a value no file type here
    holds), each naming the column or field.
    """
    import pyarrow as pa

    values = definition.bind_values(params)
    described = describe(definition, values)
    specs, problems = resolve_columns(definition, described)
    if problems:
        raise DefinitionInvalid(definition.name, problems)
    key = _check_key(definition, specs)
    binding = described.binding
    dialect = definition.source.dialect
    key_sql = quote(key.name, dialect)
    first_key: str | None = f"MIN({key_sql})"
    last_key: str | None = None
    if _is_postgres(definition.source):
        assert binding is not None
        pg = dict(described.columns)[key.name]
        binding = PgBinding(binding.occurrences, pg.display)
        if pg.name not in ("int2", "int4", "int8", "text", "varchar", "bpchar"):
            key_sql = f"CAST({key_sql} AS text)"  # bounds kept as exact text, cast back when bound
            # The least in the key's own order, as text; PostgreSQL has no MIN(uuid).
            first_key = None if pg.name == "uuid" else f"CAST({first_key} AS text)"
        elif pg.name in ("int2", "int4", "int8"):
            last_key = f"MAX({key_sql})"
    counted: Counted | None = None
    results: list[dict[str, Any]] = []
    estimate = described.estimated_rows
    if last_key is not None and estimate is not None and one_batch is not None and one_batch(estimate):
        # The key's range pays only where the rows are split (the histogram is counted with them);
        # for one batch the counting pass below is the only pass either way, and the range probe
        # can cost more than the export: a selective filter (a week of orders) makes PostgreSQL
        # walk the key's index from each end to the first row that passes (1M rows: 0.44 s on a
        # quiet machine, 0.99 s inside a busy task; the week's count 3.4 ms). An estimate that was
        # too low costs one more pass (the histogram, counted after).
        log.info("PostgreSQL expects ~%s rows, one batch: counted in one pass, no key range", f"{estimate:,}")
    elif last_key is not None:  # an integer key on PostgreSQL: its range, then one pass counts it all
        assert binding is not None
        one_pass = _integer_key_pass(definition, values, specs, key.name, binding)
        if one_pass is not None:
            counted, results = one_pass
    if counted is None:
        total, with_key, first, last, results = _run_checks(definition, values, specs, key.name, first_key,
                                                            last_key, binding)  # fmt: skip
        counted = Counted(total, with_key, first, last)
    total = counted.rows
    if total > definition.max_rows:
        raise TooManyRows(
            f"the export matches {total:,} rows, over the {definition.max_rows:,} allowed for "
            f"{definition.name!r}; narrow it with params (allowed: {', '.join(sorted(definition.params))})"
        )
    finished: list[ColumnSpec] = []
    refusals: list[tuple[str, str]] = []
    for spec, found in zip(specs, results, strict=True):
        done, problem = finish_column(spec, found)
        if problem:
            refusals.append((spec.name, problem))
        finished.append(done)
    if refusals:
        if len(refusals) == 1:
            raise DataNotExportable(*refusals[0])
        raise DefinitionInvalid(definition.name, [FieldError(f"columns.{n}", p) for n, p in refusals])
    key = next(s for s in finished if s.name == key.name)
    source_schema = pa.schema([pa.field(c.name, c.arrow_type) for c in finished])
    output = output_schema(definition, source_schema)
    notes = tuple(f"{c.name}: {c.note}" for c in finished if c.note)
    schema = SchemaPlan(tuple(finished), key, key_sql, dialect, binding, schema_to_text(output), notes,
                        definition_fingerprint(definition))  # fmt: skip
    return schema, counted


def definition_fingerprint(definition: ExportDefinition) -> str:
    """What in a definition decides a transaction's rows and columns: its source, query, key,
    declared types and transforms (by name: a transform's code is not compared)."""
    import hashlib
    import json

    def named(fn: Any) -> str | None:
        return None if fn is None else f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    facts = {
        "source": definition.source.label(),
        "sql": " ".join(definition.sql.split()),
        "key": definition.key_column,
        "types": {name: str(t) for name, t in sorted(definition.overrides().items())},
        "transform": named(definition.transform),
        "pandas_transform": named(definition.pandas_transform),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def shape_changes(definition: ExportDefinition, params: Mapping[str, Any], planned: SchemaPlan) -> list[str]:
    """How the definition or its source changed since ``planned`` was made (nothing is read but the
    source's description of the query): each change in words, naming the column. Empty: the
    finished batches' parts still fit a resumed transaction."""
    changes: list[str] = []
    if planned.definition_sha and planned.definition_sha != definition_fingerprint(definition):
        changes.append(f"the definition {definition.name!r} changed (its source, query, key, column types or "
                       "transform)")  # fmt: skip
    described = describe(definition, definition.bind_values(params))
    specs, problems = resolve_columns(definition, described)
    changes.extend(f"{p.field}: {p.message}" for p in problems)
    now = {spec.name: spec for spec in specs}
    before = {c.name: c for c in planned.columns}
    for name in before:
        if name not in now and name in dict(described.columns):
            continue  # refused above, named
        if name not in now:
            changes.append(f"column {name!r} is gone from the source")
    for name, spec in now.items():
        if name not in before:
            changes.append(f"column {name!r} is new in the source")
        elif spec.source_type != before[name].source_type:
            changes.append(f"column {name!r} was {before[name].source_type}, now {spec.source_type}")
    if not changes and list(now) != list(before):
        changes.append("the query's columns are in another order")
    return changes


def output_schema(definition: ExportDefinition, schema: pa.Schema) -> pa.Schema:
    """The schema the export's files carry: the source schema after the transform."""
    from export_tx.columns.conversions import empty_batch

    if definition.transform is None:
        return schema
    try:
        return definition.transform(empty_batch(schema)).schema
    except Exception as exc:
        raise DefinitionInvalid(definition.name, [FieldError(
            "transform", f"fails on the query's columns ({type(exc).__name__}: {exc})")]) from exc  # fmt: skip


#: Buckets of the key's histogram: a batch's rows are within one bucket of its share (a few
#: thousand groups hash in memory; no sort).
HISTOGRAM_BUCKETS = 16_384
#: A histogram plan is used only if no batch exceeds its share of the rows by more than this.
HISTOGRAM_TOLERANCE = 1.25
#: How each check's per-bucket results combine into the export's (the checks a PostgreSQL column
#: has); a check not named here makes the planner count in a pass of its own.
_COMBINED_CHECKS = frozenset({"numeric_abs", "numeric_scale", "array_shape"})


#: How long the key's range may take. From an index on the key it takes a millisecond; but where
#: the definition's filter is selective and the matching keys lie far from the ends, PostgreSQL
#: walks the index until a row passes (a day's orders in 20M: 3.6 s). Then the counting pass,
#: which finds the range too, runs instead — and a second pass counts the histogram: giving up on
#: a probe that would have answered costs two passes (20M rows: about 7 s). So the limit is far
#: above the index's millisecond. An earlier 50 ms limit is the likely cause of a 20M planning of
#: 16 s on a busy 2-core machine (5.5 s in other runs; 45 ms measured for a cold probe with its
#: connection); with 1 s the next benchmark planned 20M rows in 3.9 s.
RANGE_PROBE_SECONDS = 1.0


def range_sql(definition: ExportDefinition, key: str) -> str:
    """The least and greatest key. PostgreSQL answers it from an index on the key where the
    query is a filtered scan of one table (two index probes, milliseconds), else in a scan."""
    k = quote_identifier(key)
    return f"SELECT MIN({k}) AS k_min, MAX({k}) AS k_max FROM ({definition.sql}) AS src"  # noqa: S608


def histogram_sql(definition: ExportDefinition, key: str, columns: Sequence[ColumnSpec]) -> tuple[str, list[str]]:
    """Rows per bucket of the key, with every column check per bucket, in one pass; returns (sql,
    check aliases). Rows without a key fall in the NULL bucket."""
    k = f"CAST({quote_identifier(key)} AS bigint)"
    parts = [f"({k} - (SELECT :export_tx_first)) / (SELECT :export_tx_width) AS b", "COUNT(*) AS n"]
    aliases = []
    for i, spec in enumerate(columns):
        for j, check in enumerate(spec.checks):
            aliases.append(f"c{i}_{j}")
            parts.append(f"{check.sql} AS {aliases[-1]}")
    # Each bound value in a sub-select: PostgreSQL then reads it once for the query (an InitPlan),
    # not once per row (20M rows: 2.4 s instead of 5.2 s). Unordered: a hash of the buckets.
    return f"SELECT {', '.join(parts)} FROM ({definition.sql}) AS src GROUP BY 1", aliases  # noqa: S608


def combine_checks(kind: str, values: Sequence[Any]) -> Any:
    """One check's result over the whole export from its results per bucket (NULL: no value)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if kind == "array_shape":
        return any(present)
    if kind == "numeric_scale":
        return max(int(v) for v in present)
    if kind == "numeric_abs":  # PostgreSQL's order: NaN above Infinity above every number

        def rank(v: Any) -> tuple[int, Decimal]:
            d = _decimal(v)
            assert d is not None
            return (1, Decimal(0)) if d.is_nan() else (0, d)

        return max(present, key=rank)
    raise ValueError(f"no way to combine the check {kind!r}")


def _integer_key_pass(
    definition: ExportDefinition, values: Mapping[str, Any], specs: Sequence[ColumnSpec], key: str,
    binding: PgBinding,
) -> tuple[Counted, list[dict[str, Any]]] | None:  # fmt: skip
    """An integer key on PostgreSQL: its range (from the index where there is one), then one pass
    that counts the rows per bucket of the range and runs every column check — where counting, then
    grouping, was two passes (20M rows: about 3 s less). None where the checks do not combine by
    bucket or the range is empty or too wide: the caller counts in a pass of its own."""
    if any(check.kind not in _COMBINED_CHECKS for spec in specs for check in spec.checks):
        return None
    began = time.perf_counter()
    try:
        with time_limit(RANGE_PROBE_SECONDS):
            bounds = fetch_all(definition.source, range_sql(definition, key), values, binding).to_pylist()[0]
    except Exception as exc:
        if sqlstate(exc) != "57014":  # query_canceled: the statement timeout
            raise
        log.info("the key's range took over %.1f s; counting instead", RANGE_PROBE_SECONDS)
        return None
    log.info("the key's range in %.3f s", time.perf_counter() - began)
    first, last = bounds["k_min"], bounds["k_max"]
    if not isinstance(first, int) or not isinstance(last, int) or last - first >= 2**62:
        return None
    width = max(1, math.ceil((last - first + 1) / HISTOGRAM_BUCKETS))
    sql, aliases = histogram_sql(definition, key, specs)
    table = fetch_all(definition.source, sql, {**values, "export_tx_first": first, "export_tx_width": width},
                      binding).to_pydict()  # fmt: skip
    rows = [int(n) for n in table["n"]]
    total = sum(rows)
    buckets = sorted((int(b), n) for b, n in zip(table["b"], rows, strict=True) if b is not None)
    results: list[dict[str, Any]] = []
    position = 0
    for spec in specs:
        found: dict[str, Any] = {}
        for check in spec.checks:
            found[check.kind] = combine_checks(check.kind, table[aliases[position]])
            position += 1
        results.append(found)
    with_key = sum(n for _, n in buckets)
    return Counted(total, with_key, first, last, tuple(buckets), width), results


def batches_from_histogram(
    buckets: Sequence[tuple[int, int]], first: int, width: int, total: int, count: int
) -> list[PlannedBatch]:
    """``count`` batches from a histogram of the key (``(bucket, rows)`` in order; bucket ``b``
    holds ``first + b·width <= key < first + (b+1)·width``): batch ``i`` ends at the first bucket
    edge where the rows so far reach ``i/count`` of ``total``. Exact row counts, bounds on bucket
    edges (equal keys share a bucket, so they never straddle two batches)."""
    plan: list[PlannedBatch] = []
    lo, rows, seen = first, 0, 0
    for bucket, n in buckets:
        aim = total * (len(plan) + 1) / count
        if rows and seen >= aim and len(plan) < count - 1:
            edge = first + bucket * width
            plan.append(PlannedBatch(batch_no=len(plan) + 1, lo=lo, hi=edge, planned_rows=rows))
            lo, rows = edge, 0
        rows += n
        seen += n
    plan.append(PlannedBatch(batch_no=len(plan) + 1, lo=lo, hi=None, planned_rows=rows))
    return plan


def _histogram_batches(
    definition: ExportDefinition, params: Mapping[str, Any], schema: SchemaPlan, counted: Counted, size: int
) -> list[PlannedBatch] | None:
    """Batches of an integer key from its histogram — where numbering every row in key order is a
    serial window pass (20M rows: 2.6 s against 5.1 s). The histogram was counted with the rows,
    or (the counting pass found the range instead) is counted now. None when it cannot do as well:
    no integer range, or a bucket so heavy the batches would be uneven (a key bunched into a few
    values)."""
    first, last = counted.first_key, counted.last_key
    if not isinstance(first, int) or not isinstance(last, int) or last - first >= 2**62:
        return None
    histogram, width = counted.histogram, counted.width
    if not histogram:
        width = max(1, math.ceil((last - first + 1) / HISTOGRAM_BUCKETS))
        values = {**definition.bind_values(params), "export_tx_first": first, "export_tx_width": width}
        sql, _ = histogram_sql(definition, schema.key.name, ())
        table = fetch_all(definition.source, sql, values, schema.binding).to_pydict()
        histogram = tuple(sorted((int(b), int(n)) for b, n in zip(table["b"], table["n"], strict=True)))
    count = math.ceil(counted.rows / size)
    plan = batches_from_histogram(histogram, first, width, counted.rows, count)
    if max(b.planned_rows for b in plan) > HISTOGRAM_TOLERANCE * counted.rows / count:
        return None
    return plan


def plan_export(
    definition: ExportDefinition, params: Mapping[str, Any], batch_size: int | None, max_batches: int, slots: int = 1
) -> Plan:
    """Fix the columns, count the matching rows, enforce the definition's limit, compute the batches
    (``batch_size`` None: automatic, one per slot — see :func:`choose_batch_size`)."""

    def one_batch(rows: int) -> bool:
        return rows <= choose_batch_size(rows, batch_size, max_batches, slots)

    schema, counted = plan_schema(definition, params, one_batch)
    total = counted.rows
    if counted.with_key != total:
        raise ExportError(
            f"{total - counted.with_key:,} matching rows have no {definition.key_column!r}; the definition's "
            "key column must never be NULL"
        )
    size = choose_batch_size(total, batch_size, max_batches, slots)
    if total == 0:
        return Plan([], 0, size, "planned 0 batches: no rows match; the result will be an empty file", schema)
    if total <= size and counted.first_key is not _UNKNOWN:
        # One batch from the first key: the counting pass found it, no second pass numbers the rows.
        batches = [PlannedBatch(batch_no=1, lo=counted.first_key, hi=None, planned_rows=total)]
    else:
        batches = _histogram_batches(definition, params, schema, counted, size) or []
        if not batches:  # numbered in key order: exact, whatever the key
            values = {**definition.bind_values(params), "export_tx_batch_size": size}
            starts = fetch_all(definition.source, starts_sql(definition, schema), values, schema.binding)
            pairs = list(zip(starts.column("k").to_pylist(), starts.column("rn").to_pylist(), strict=True))
            batches = batches_from_starts(pairs, total)
    count = "1 batch" if len(batches) == 1 else f"{len(batches)} batches"
    note = f"planned {count} of ~{size:,} rows for {total:,} rows"
    if batch_size is None:  # say how the count was chosen
        note += (f" (automatic: one batch per slot, {slots} slots, at least {BATCH_ROWS_AUTO_MIN:,} and at most "
                 f"{BATCH_SIZE_MAX:,} rows each)")  # fmt: skip
    elif size != batch_size:
        note += f" (batch_size grown from {batch_size:,} to {size:,} to stay within {max_batches} batches)"
    else:  # by row count, whatever the key's spread
        note += f" ({total:,} rows ÷ {size:,} rows per batch, rounded up)"
    return Plan(batches, total, size, note, schema)
