"""Definition files a data team keeps in its own folders: YAML for SQL, Python for transforms.

A YAML definition, for analysts who write SQL, not code::

    name: invoices
    description: Invoices by issue date.
    connection: billing_pg            # an Airflow connection id (PostgreSQL, MySQL/MariaDB, …) …
    # sqlite: /data/billing.db        # … or a SQLite file
    sql: |
      SELECT invoice_id, customer_id, total, issued_at FROM invoices
      WHERE (CAST(:since AS date) IS NULL OR issued_at >= CAST(:since AS date))
    key_column: invoice_id
    params:
      since: {type: string, format: date, title: Issued on or after}
    required: [since]                 # optional
    max_rows: 20000000                # optional limits
    retention_days: 7                 # kept this long unless the request asks otherwise …
    retention_days_max: 30            # … up to this (default: retention_days)
    columns:                          # optional: only the types to change
      total: decimal(18, 2)
    consistent_snapshot: true         # optional, PostgreSQL only: the whole export reads one moment

A Python file sets ``DEFINITION = ExportDefinition(...)``, exactly like the shipped ones. A file
that cannot be loaded raises :class:`DefinitionFileError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export_tx.definition import ExportDefinition
from export_tx.errors import BadDefinition, DefinitionFileError

if TYPE_CHECKING:
    from export_tx.sources import DbApiSource, PostgresSource, SqliteSource

YAML_FIELDS = (
    "name", "description", "connection", "sqlite", "sql", "key_column", "params", "required",
    "max_rows", "retention_days", "retention_days_max", "columns", "consistent_snapshot",
)  # fmt: skip
SUFFIXES = (".py", ".yaml", ".yml")
#: Python definition files are imported under this package name (never clashing with real modules).
MODULE_PREFIX = "export_tx_team_definitions"
#: A definition file larger than this is not a definition.
MAX_FILE_BYTES = 1_000_000


def load_file(path: Path) -> ExportDefinition:
    """The definition in ``path`` (``.py``, ``.yaml`` or ``.yml``)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DefinitionFileError(str(path), None, f"larger than {MAX_FILE_BYTES:,} bytes")
    if path.suffix == ".py":
        return _load_python(path)
    return _load_yaml(path)


def _load_python(path: Path) -> ExportDefinition:
    digest = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"{MODULE_PREFIX}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionFileError(str(path), None, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, BadDefinition):
            raise _named(str(path), exc) from exc
        line = _line_in(path, exc)
        raise DefinitionFileError(str(path), None, f"{type(exc).__name__}{line}: {exc}") from exc
    definition = getattr(module, "DEFINITION", None)
    if not isinstance(definition, ExportDefinition):
        raise DefinitionFileError(str(path), "DEFINITION", "must be set to ExportDefinition(...)")
    if definition.origin is None:
        object.__setattr__(definition, "origin", str(path))
    return definition


def _line_in(path: Path, exc: BaseException) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename) == path:
            return f" at line {frame.lineno}"
    return ""


def _load_yaml(path: Path) -> ExportDefinition:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DefinitionFileError(str(path), None, f"not valid YAML{where}") from exc
    return definition_from_mapping(raw, str(path), default_name=path.stem)


def definition_from_mapping(raw: Any, origin: str, default_name: str | None = None) -> ExportDefinition:
    """An :class:`ExportDefinition` from a YAML mapping; every problem names its field."""
    from export_tx.sources import SqliteSource

    def fail(field: str | None, message: str) -> DefinitionFileError:
        return DefinitionFileError(origin, field, message)

    if not isinstance(raw, dict):
        raise fail(None, "must be a mapping of fields (name, sql, key_column, …)")
    unknown = sorted(str(k) for k in raw if k not in YAML_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; allowed: {', '.join(YAML_FIELDS)}")
    for field in ("sql", "key_column"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise fail(field, "is required (text)")
    if ("connection" in raw) == ("sqlite" in raw):
        raise fail("connection", "name exactly one source: connection (an Airflow connection id) or sqlite (a file)")
    source: PostgresSource | SqliteSource | DbApiSource
    if "connection" in raw:
        if not isinstance(raw["connection"], str) or not raw["connection"].strip():
            raise fail("connection", "must be an Airflow connection id")
        source = connection_source(raw["connection"].strip())
    else:
        if raw["sqlite"] is not None and not isinstance(raw["sqlite"], str):
            raise fail("sqlite", "must be the path of a SQLite file (empty: the embedded demo database)")
        source = SqliteSource(raw["sqlite"] or None)
    expected = {"params": dict, "columns": dict, "required": list, "description": str, "name": str}
    for field, kind in expected.items():
        if field in raw and raw[field] is not None and not isinstance(raw[field], kind):
            raise fail(field, f"must be a {'mapping' if kind is dict else kind.__name__}")
    for field in ("max_rows", "retention_days", "retention_days_max"):
        if field in raw and (isinstance(raw[field], bool) or not isinstance(raw[field], int)):
            raise fail(field, "must be a whole number")
    if "consistent_snapshot" in raw and not isinstance(raw["consistent_snapshot"], bool):
        raise fail("consistent_snapshot", "must be true or false")
    values: dict[str, Any] = {
        "name": raw.get("name") or default_name,
        "description": raw.get("description") or "",
        "source": source,
        "sql": raw["sql"],
        "key_column": raw["key_column"],
        "params": raw.get("params") or {},
        "required": tuple(raw.get("required") or ()),
        "columns": raw.get("columns") or {},
        "origin": origin,
    }
    for field in ("max_rows", "retention_days", "retention_days_max", "consistent_snapshot"):
        if field in raw:
            values[field] = raw[field]
    try:
        return ExportDefinition(**values)
    except BadDefinition as exc:
        raise _named(origin, exc) from exc


def connection_source(conn_id: str) -> DbApiSource:
    """The source an Airflow connection names. Nothing is looked up here: definitions load when a DAG
    file is parsed, and a connection may live in the metadata database or a secrets backend. The
    connection's type decides when the export runs: PostgreSQL keeps its ADBC path (binary COPY,
    typed binding), any other SQL connection is read through its provider's hook."""
    from export_tx.sources import DbApiSource

    return DbApiSource(conn_id)


def _named(origin: str, exc: BadDefinition) -> DefinitionFileError:
    """The first problem's field names the error; the message holds them all."""
    first = exc.errors[0]
    rest = "".join(f"; {e}" for e in exc.errors[1:])
    return DefinitionFileError(origin, first.field, first.message + rest)
