"""What an export is: a named, reviewed query with its parameters, limits and transform.

A data team adds an export by adding one file: a Python module setting
``DEFINITION = ExportDefinition(...)`` (for transforms), or a YAML file with the same fields
(:mod:`export_tx.catalog.files`), in ``export_tx/definitions/`` or in a folder named by
``EXPORT_TX_DEFINITIONS_PATH``. No DAG code changes; the DAG's ``definition`` Param lists every
registered name.

Types come from the source. ``columns`` names only the columns whose type the team wants
different (an override); it never selects columns — the query does. The older ``schema``
(a function returning the whole ``pyarrow`` schema) still works: it must then list every column.

A transform runs on every record batch, between the source and the file. Give at most one:

* ``transform=fn`` — an Arrow function ``RecordBatch -> RecordBatch`` (vectorised, no copy). Its
  output on an empty batch fixes the file's columns at planning, so it may add or retype columns.
* ``pandas_transform=fn`` — a pandas function ``DataFrame -> DataFrame``, for teams that think in
  pandas. Each batch arrives as a frame of Arrow-backed columns (``pd.ArrowDtype``: decimals,
  integers with NULLs, timestamps with their time zone and binary keep every value exactly) and
  the frame it returns must hold the query's columns, with the types they came in with: a dropped,
  added or renamed column, or a column of another type, stops the export naming the column (a new
  type is declared in ``columns``; the function then receives the column as that type). Columns
  may come back in any order. Rows may be removed (a filter) but never added: the export's
  ``max_rows`` was checked on the source's count. A column the function rebuilt from Python
  objects (``.map``, a list) is converted back to its type only if every value fits exactly; a
  NumPy float column holding NaN is refused (it can no longer tell NULL from NaN). pandas is
  imported only when such a transform runs, never while definitions load. It costs a round trip
  per batch (``python -m bench.transform_cost`` measures it against the Arrow transform).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from export_tx.errors import BadDefinition, FieldError, RequestInvalid, shown
from export_tx.sources import WRAPPER_PREFIX, Source, check_identifier, placeholders

if TYPE_CHECKING:
    import pyarrow as pa

Transform = Callable[["pa.RecordBatch"], "pa.RecordBatch"]
#: ``pandas.DataFrame -> pandas.DataFrame`` (typed loosely: pandas is optional and has no stubs here).
PandasTransform = Callable[[Any], Any]

#: Query parameters of ``…/preview`` that are not the definition's own.
RESERVED_PARAMS = ("batch_size", "rows")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Bounds of a parameter value (a schema's own maxLength may be lower).
MAX_PARAM_CHARS = 10_000
MAX_PARAM_ITEMS = 1_000
#: The longest any definition may keep a result.
RETENTION_DAYS_LIMIT = 3650
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")


@dataclass(frozen=True)
class ExportDefinition:
    name: str
    description: str
    source: Source
    #: A SELECT with ``:param`` placeholders for every parameter (unset ones bind NULL).
    sql: str
    #: Column the planner splits on: unique and never NULL (an integer or text column is best).
    key_column: str
    #: JSON schema ``properties`` of the definition's parameters.
    params: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    max_rows: int = 50_000_000
    #: Days a result is kept unless the request asks for fewer (or more, up to the maximum).
    retention_days: int = 7
    #: The longest retention a request may ask for (None: ``retention_days``).
    retention_days_max: int | None = None
    #: Type overrides by column name (``pyarrow`` types or names such as ``"decimal(18,2)"``).
    #: Only where the team wants another type than the source's; every cast must keep every value.
    columns: Mapping[str, Any] = field(default_factory=dict)
    #: Older form: a function returning the whole schema. Must list every column the query returns.
    schema: Callable[[], pa.Schema] | None = None
    #: Optional vectorised per-row processing over each Arrow record batch.
    transform: Transform | None = None
    #: Or the same as a pandas function over each batch as a DataFrame (see the module's docstring).
    pandas_transform: PandasTransform | None = None
    #: A point-in-time export: planning and every batch read one snapshot of the source, the
    #: source as it was when the export began, however its rows change meanwhile (PostgreSQL only;
    #: see :mod:`export_tx.snapshots`).
    consistent_snapshot: bool = False
    #: The file the definition came from (for messages); None for the shipped ones.
    origin: str | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise BadDefinition(problems)

    def problems(self) -> list[FieldError]:
        """Every mistake in the definition, each naming its field."""
        import jsonschema

        from export_tx.columns.typemap import check_type_name

        found: list[FieldError] = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            found.append(FieldError("name", "must start with a letter and hold only letters, digits and _"))
        try:
            check_identifier(self.key_column)
        except (ValueError, TypeError):
            found.append(FieldError("key_column", "must be a plain column name (letters, digits, _)"))
        if not isinstance(self.sql, str) or not self.sql.strip():
            found.append(FieldError("sql", "must be a SELECT statement"))
        elif self.sql.strip().rstrip(";").count(";"):
            found.append(FieldError("sql", "must be a single statement"))
        if not isinstance(self.params, Mapping):
            found.append(FieldError("params", "must map parameter names to JSON schemas"))
            return found
        for name, spec in self.params.items():
            if not isinstance(name, str) or not _NAME.match(name) or name.startswith(WRAPPER_PREFIX):
                found.append(FieldError(f"params.{name}", "a parameter name is letters, digits and _, "
                                        f"not starting with {WRAPPER_PREFIX}"))  # fmt: skip
            elif name in RESERVED_PARAMS:
                found.append(FieldError(f"params.{name}", f"reserved; not allowed: {', '.join(RESERVED_PARAMS)}"))
            if not isinstance(spec, Mapping):
                found.append(FieldError(f"params.{name}", "must be a JSON schema (a mapping)"))
                continue
            try:
                jsonschema.Draft202012Validator.check_schema(dict(spec))
            except jsonschema.SchemaError as exc:
                found.append(FieldError(f"params.{name}", f"not a valid JSON schema: {exc.message}"))
        for name in self.required:
            if name not in self.params:
                found.append(FieldError("required", f"{name!r} is not a declared parameter"))
        if isinstance(self.sql, str):
            for name in sorted(set(placeholders(self.sql)) - set(self.params)):
                found.append(FieldError("sql", f"placeholder :{name} is not a declared parameter"))
        for label, value, low in (("max_rows", self.max_rows, 1), ("retention_days", self.retention_days, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                found.append(FieldError(label, f"must be a whole number of at least {low}"))
        if self.retention_days_max is not None:
            value = self.retention_days_max
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= RETENTION_DAYS_LIMIT:
                rule = f"must be a whole number from 1 to {RETENTION_DAYS_LIMIT}"
                found.append(FieldError("retention_days_max", rule))
            elif isinstance(self.retention_days, int) and value < self.retention_days:
                found.append(FieldError("retention_days_max", "must be at least retention_days"))
        if not isinstance(self.columns, Mapping):
            found.append(FieldError("columns", "must map column names to types"))
        else:
            for column, kind in self.columns.items():
                try:
                    check_type_name(kind)
                except ValueError as exc:
                    found.append(FieldError(f"columns.{column}", str(exc)))
        if self.columns and self.schema is not None:
            found.append(FieldError("columns", "declare types either in columns or in schema, not both"))
        if self.transform is not None and not callable(self.transform):
            found.append(FieldError("transform", "must be a function RecordBatch -> RecordBatch"))
        if self.pandas_transform is not None and not callable(self.pandas_transform):
            found.append(FieldError("pandas_transform", "must be a function DataFrame -> DataFrame (pandas)"))
        if self.transform is not None and self.pandas_transform is not None:
            found.append(FieldError("pandas_transform", "give either transform (Arrow) or pandas_transform, not both"))
        if not isinstance(self.consistent_snapshot, bool):
            found.append(FieldError("consistent_snapshot", "must be true or false"))
        elif self.consistent_snapshot and (problem := snapshot_refusal(self.source)):
            found.append(FieldError("consistent_snapshot", problem))
        return found

    def longest_retention(self) -> int:
        """The most days a request may keep the result."""
        return self.retention_days_max or self.retention_days

    def params_schema(self) -> dict[str, Any]:
        """The JSON schema of ``params``: unknown parameters are always refused."""
        return {
            "type": "object",
            "properties": copy.deepcopy(dict(self.params)),
            "required": list(self.required),
            "additionalProperties": False,
        }

    def overrides(self) -> dict[str, pa.DataType]:
        """Column name → the type the definition asks for (``columns``, or the older ``schema``)."""
        from export_tx.columns.typemap import parse_type

        if self.schema is not None:
            return {f.name: f.type for f in self.schema()}
        return {name: parse_type(kind) for name, kind in self.columns.items()}

    def validate_params(self, params: Any) -> dict[str, Any]:
        """Check ``params`` against the schema; return them (a copy).

        Raises :class:`RequestInvalid` naming each bad field and what is allowed.
        """
        import jsonschema

        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RequestInvalid([FieldError("params", "must be an object of parameters")])
        schema = self.params_schema()
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        errors: list[FieldError] = []
        allowed = ", ".join(sorted(self.params)) or "none"
        for err in sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.path]):
            if err.validator == "additionalProperties":
                for name in sorted(str(n) for n in set(params) - set(self.params)):
                    errors.append(
                        FieldError(f"params.{_name(name)}", f"unknown parameter of {self.name!r}; allowed: {allowed}")
                    )
            elif err.validator == "required":
                errors.append(FieldError("params", _cut(err.message)))
            else:
                name = ".".join(str(p) for p in err.path) or "?"
                errors.append(FieldError(f"params.{_name(name)}", _describe(err, self.params.get(name, {}))))
        bad = {e.field for e in errors}
        for name, value in params.items():
            if name in self.params and f"params.{name}" not in bad and (problem := _bindable(value)):
                errors.append(FieldError(f"params.{name}", problem))
        if errors:
            raise RequestInvalid(errors)
        return dict(params)

    def bind_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter for the SQL's placeholders; an unset one binds NULL."""
        return {name: params.get(name) for name in self.params}

    def describe(self) -> dict[str, Any]:
        """What a client sees: name, description, parameter schema, limits, type overrides."""
        from export_tx.columns.typemap import type_name

        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.params_schema(),
            "limits": {
                "max_rows": self.max_rows,
                "retention_days_default": self.retention_days,
                "retention_days_max": self.longest_retention(),
            },
            "column_types": {name: type_name(t) for name, t in self.overrides().items()},
            "consistent_snapshot": self.consistent_snapshot,
        }


def snapshot_refusal(source: Source) -> str | None:
    """Why ``source`` cannot give a point-in-time export, as far as is known without looking anything
    up (definitions load at DAG parse time): PostgreSQL can; an Airflow connection's type is checked
    when the export runs; anything else cannot."""
    from export_tx.sources import DbApiSource, PostgresSource

    if isinstance(source, PostgresSource | DbApiSource):
        return None
    return f"a point-in-time export reads one PostgreSQL snapshot; {source.label()} is not PostgreSQL"


def _bindable(value: Any) -> str | None:
    """Why a JSON value cannot be bound to a database parameter exactly, or is beyond what one
    request may hold (None: it can)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
        return f"longer than {MAX_PARAM_CHARS:,} characters"
    if isinstance(value, list | dict) and len(value) > MAX_PARAM_ITEMS:
        return f"more than {MAX_PARAM_ITEMS:,} items"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"out of range; allowed: {INT64_MIN} to {INT64_MAX} (a 64-bit integer)"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, str) and "\x00" in value:
        return "must not contain NUL characters"
    if isinstance(value, list | dict):
        return None if all(_bindable(v) is None for v in (value.values() if isinstance(value, dict) else value)) \
            else "holds a value that cannot be bound"  # fmt: skip
    return None


def _describe(err: Any, spec: Mapping[str, Any]) -> str:
    """What is wrong with a parameter, quoting at most a few characters of the value."""
    if "enum" in spec:
        return f"{shown(err.instance)} is not allowed; allowed: {_cut(', '.join(map(str, spec['enum'])), 500)}"
    if spec.get("format") == "date":
        return f"{shown(err.instance)} is not a date; use YYYY-MM-DD"
    if err.validator == "maxLength":
        return f"longer than {err.validator_value:,} characters"
    if err.validator == "type":
        return f"must be of type {err.validator_value}"
    return _cut(str(err.message))


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name(name: str) -> str:
    """A parameter name as an error's field: cut short (a hostile request may send a huge one)."""
    return name if len(name) <= 64 else name[:63] + "…"
