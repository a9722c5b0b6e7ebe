"""Errors that are part of the interface, and which failures are worth a retry.

Every :class:`ExportError` carries a message a user can act on and ends the transaction at
once. Anything else is judged by :func:`is_transient`: a lost connection, a timeout, a lock, a
storage hiccup is retried by Airflow; a mistake in the request or the definition (bad SQL, a
type that does not match, a value out of range) would fail the same way again, so it is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export_tx.states import State


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


#: How much of a refused value an error message quotes.
SHOWN_CHARS = 40
#: How many field errors one answer lists at most.
MAX_ERRORS = 20


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A refused value as an error message quotes it: its repr, cut short (never echo a 5 MB value)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def capped(errors: list[FieldError]) -> list[FieldError]:
    """At most :data:`MAX_ERRORS` errors; the last says how many more there were."""
    if len(errors) <= MAX_ERRORS:
        return errors
    rest = len(errors) - (MAX_ERRORS - 1)
    return [*errors[: MAX_ERRORS - 1], FieldError(errors[MAX_ERRORS - 1].field, f"… and {rest:,} more errors")]


class ExportTxError(Exception):
    """Every error the product raises on purpose (one base: ``except ExportTxError`` catches them all)."""


class ExportError(ExportTxError):
    """An export failure whose message is safe and useful to show the requester; never retried."""


class RequestInvalid(ExportError):
    """The request (run conf) is invalid; ``errors`` names each bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = capped(errors)
        super().__init__("invalid request: " + "; ".join(str(e) for e in self.errors))


class DefinitionInvalid(ExportError):
    """The definition cannot be exported as written: its SQL, a column or an override. ``errors``
    names each column (``columns.amount``) or field (``sql``, ``key_column``)."""

    def __init__(self, definition: str, errors: list[FieldError]) -> None:
        self.definition = definition
        self.errors = errors
        super().__init__(f"definition {definition!r}: " + "; ".join(str(e) for e in errors))


class DataNotExportable(ExportError):
    """The source holds a value the file's type for that column cannot hold exactly."""

    def __init__(self, column: str, message: str) -> None:
        self.column = column
        super().__init__(f"column {column!r}: {message}")


class DefinitionFileError(ExportTxError):
    """A definition file (Python or YAML) that cannot be loaded; names the file and the field."""

    def __init__(self, path: str, field: str | None, message: str) -> None:
        self.path = path
        self.field = field
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {message}")


class TooManyRows(ExportError):
    pass


class IntegrityError(ExportError):
    """The data did not add up (e.g. merged rows differ from the batches' rows)."""


class TransactionClosed(ExportError):
    """The transaction already ended (e.g. cancelled): the step has nothing left to do."""


class SnapshotUnavailable(ExportError):
    """A point-in-time export cannot read its snapshot of the source: it was never taken, or it was
    lost or released before this step read. Never retried: another snapshot would be another moment."""


class SnapshotMoved(ExportTxError):
    """The snapshot's id changed while a step imported the old one (a restarted holder took it
    over, same moment): worth another attempt, which reads the new id."""


class BadDefinition(ExportTxError, ValueError):
    """An ``ExportDefinition`` built with mistakes; ``errors`` names each field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class Unsupported(ExportTxError):
    """A source type the product cannot export exactly; the message says what to do instead."""


class IllegalTransition(ExportTxError):
    """A state change the state machine refuses."""

    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"transaction is {current.value}; it cannot become {target.value}")
        self.current = current
        self.target = target


class NotFound(ExportTxError, KeyError):
    """No transaction (or batch) with that id in the header store."""


class BulkExportsInvalid(ExportTxError, ValueError):
    """The scheduled bulk exports file is not valid; the message names the entry and field."""


class BulkRunIdTaken(ExportTxError):
    """A bulk export's run id was used by another run."""


class ThriftError(ExportTxError, ValueError):
    """The bytes are not a well-formed compact-protocol struct (truncated, unknown type, too deep)."""


class CliError(ExportTxError):
    """What the ``export-tx`` client tells its user (no stack trace)."""


# -- transient or final ---------------------------------------------------------------------------

# SQLSTATE classes and codes worth another attempt: connection exceptions, rollbacks from
# serialisation failures and deadlocks, resources, locks, operator intervention, system errors.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_SQLSTATES = {"55P03", "55006", "XX000"}
# Driver messages (errors raised while a result streams carry no SQLSTATE).
_TRANSIENT_PHRASES = re.compile(
    r"timeout|timed out|connection|could not receive|could not send|server closed|terminating|"
    r"canceling statement|deadlock|could not serialize|lock|shutdown|too many clients|temporarily|"
    r"database is locked|database table is locked|busy|disk i/o",
    re.IGNORECASE,
)
_FINAL_CONNECT_PHRASES = re.compile(
    r"password authentication failed|role .* does not exist|database .* does not exist|no pg_hba\.conf|"
    r"permission denied|invalid authorization",
    re.IGNORECASE,
)
_FINAL_TYPES = (
    ValueError,  # pyarrow's ArrowInvalid and ArrowTypeError too
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ZeroDivisionError,
    NotImplementedError,  # pyarrow's ArrowNotImplementedError too
    AssertionError,
    LookupError,
    UnicodeError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_FINAL_CLASS_NAMES = {"AirflowNotFoundException", "NoCredentialsError", "ParamValidationError"}
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                       "ServiceUnavailable", "RequestTimeTooSkewed", "503", "500"}  # fmt: skip


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a database driver attached to ``exc`` (ADBC, psycopg, SQLAlchemy), if any."""
    for candidate in (exc, getattr(exc, "orig", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """True when trying again may succeed: lost connections, timeouts, locks, storage hiccups."""
    if isinstance(exc, ExportError):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _FINAL_CLASS_NAMES:
        return False
    code = sqlstate(exc)
    if code is not None:
        return code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES
    message = str(exc)
    if "ClientError" in names:  # botocore: throttling and server errors retry, access problems do not
        error = getattr(exc, "response", {}).get("Error", {})
        return str(error.get("Code")) in _TRANSIENT_S3_CODES
    if names & {"OperationalError", "InterfaceError"}:  # database drivers: connecting, I/O
        return not _FINAL_CONNECT_PHRASES.search(message)
    if isinstance(exc, OSError) and message.startswith(("[libpq]", "[SQLite]")):
        # An error while a result streamed: a connection or lock problem, or the query's own
        # (division by zero, a value that does not convert), which would happen again.
        if _FINAL_CONNECT_PHRASES.search(message):
            return False
        return bool(_TRANSIENT_PHRASES.search(message)) and "type mismatch" not in message.lower()
    if isinstance(exc, _FINAL_TYPES):
        return False
    if names & {"ProgrammingError", "DataError", "IntegrityError", "NotSupportedError"}:
        return False
    return True  # connection resets, timeouts, memory, anything unknown: worth another attempt


def driver_message(exc: BaseException) -> str:
    """The useful line of a driver error: PostgreSQL's ``ERROR:`` text without the echoed query."""
    text = str(exc)
    match = re.search(r"ERROR:\s+(.*)", text)
    line = match.group(1) if match else (text.strip().splitlines() or [""])[0]
    line = re.sub(r"^(INVALID_ARGUMENT|NOT_FOUND|INVALID_DATA|IO|INTERNAL|UNKNOWN): ", "", line)
    return line.strip()[:300]


# -- what the requester is told ----------------------------------------------------------------

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
# A server path or storage URI in a driver's message: only its last part is shown.
_PATHS = re.compile(r"(?:[A-Za-z][\w+.-]*://|(?<![\w.])/)(?:[^\s'\"/]+/)+([^\s'\"/]+)")


def user_message(what: str, exc: BaseException, *, retries: bool = True) -> str:
    """A message safe to show the requester: no stack trace, no credentials; and whether it is
    worth waiting for a retry."""
    if isinstance(exc, ExportError):
        return f"{what}: {exc}"
    code = sqlstate(exc)
    if code is not None or str(exc).startswith(("[libpq]", "[SQLite]")):
        first_line = driver_message(exc) + (f" (SQLSTATE {code})" if code else "")
    else:
        first_line = (str(exc).strip().splitlines() or [""])[0]
    first_line = _PATHS.sub(r"…/\1", _CREDENTIALS.sub(r"\1***@", first_line))[:300]
    detail = f": {first_line}" if first_line else ""
    if not retries:
        return f"{what} failed ({type(exc).__name__}{detail})"
    if not is_transient(exc):
        return f"{what} failed ({type(exc).__name__}{detail}); not retried: it would fail the same way again"
    return f"{what} failed ({type(exc).__name__}{detail}); the Airflow task log has the details"
