"""What an export is: a named, reviewed query with its parameters, limits and transform.

A data team adds an export by adding one file to ``export_tx/definitions/`` that sets
``DEFINITION = ExportDefinition(...)``. No DAG code changes; the DAG's ``definition`` Param
lists every registered name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from export_tx.errors import FieldError, RequestInvalid
from export_tx.sources import Source, check_identifier

if TYPE_CHECKING:
    import pyarrow as pa

Transform = Callable[["pa.RecordBatch"], "pa.RecordBatch"]


@dataclass(frozen=True)
class ExportDefinition:
    name: str
    description: str
    source: Source
    #: A SELECT with ``:param`` placeholders for every parameter (unset ones bind NULL).
    sql: str
    #: Column the planner splits on: an integer or text column, unique and never NULL.
    key_column: str
    #: JSON schema ``properties`` of the definition's parameters.
    params: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    max_rows: int = 50_000_000
    retention_days: int = 7
    #: Declared Arrow schema of the query's columns: every part is cast to it, so parts agree
    #: even when a batch's values would infer another type (all NULL, PostgreSQL numeric).
    schema: Callable[[], pa.Schema] | None = None
    #: Optional vectorised per-row processing over each Arrow record batch.
    transform: Transform | None = None

    def __post_init__(self) -> None:
        check_identifier(self.key_column)
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"definition name {self.name!r} must be letters, digits and _")

    def params_schema(self) -> dict[str, Any]:
        """The JSON schema of ``params``: unknown parameters are always refused."""
        return {
            "type": "object",
            "properties": copy.deepcopy(dict(self.params)),
            "required": list(self.required),
            "additionalProperties": False,
        }

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
        for err in sorted(validator.iter_errors(params), key=lambda e: list(e.path)):
            if err.validator == "additionalProperties":
                for name in sorted(set(params) - set(self.params)):
                    errors.append(
                        FieldError(f"params.{name}", f"unknown parameter of {self.name!r}; allowed: {allowed}")
                    )
            elif err.validator == "required":
                errors.append(FieldError("params", err.message))
            else:
                name = ".".join(str(p) for p in err.path) or "?"
                errors.append(FieldError(f"params.{name}", _describe(err, self.params.get(name, {}))))
        if errors:
            raise RequestInvalid(errors)
        return dict(params)

    def bind_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter for the SQL's placeholders; an unset one binds NULL."""
        return {name: params.get(name) for name in self.params}

    def describe(self) -> dict[str, Any]:
        """What a client sees: name, description, parameter schema, limits."""
        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.params_schema(),
            "limits": {"max_rows": self.max_rows, "retention_days": self.retention_days},
        }


def _describe(err: Any, spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return f"{err.instance!r} is not allowed; allowed: {', '.join(map(str, spec['enum']))}"
    if spec.get("format") == "date":
        return f"{err.instance!r} is not a date; use YYYY-MM-DD"
    return str(err.message)
