"""Which failures are worth a retry: transient ones only."""

from __future__ import annotations

import errno

import pyarrow as pa
import pytest

from export_tx.errors import DataNotExportable, RequestInvalid, driver_message, is_transient, user_message


class _DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class OperationalError(Exception):
    """Named like the drivers' connection errors (ADBC, psycopg, SQLAlchemy)."""


class AirflowNotFoundException(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_DriverError('relation "orderz" does not exist', "42P01"), False),  # bad SQL
        (_DriverError("syntax error", "42601"), False),
        (_DriverError('value "1e20" is out of range for type bigint', "22003"), False),
        (_DriverError("invalid input syntax for type integer", "22P02"), False),
        (_DriverError("permission denied for table orders", "42501"), False),
        (_DriverError("server closed the connection unexpectedly", "08006"), True),
        (_DriverError("could not serialize access", "40001"), True),
        (_DriverError("deadlock detected", "40P01"), True),
        (_DriverError("could not obtain lock", "55P03"), True),
        (_DriverError("canceling statement due to statement timeout", "57014"), True),
        (_DriverError("the database system is shutting down", "57P03"), True),
        (OSError("[libpq] Execution error [PGRES_FATAL_ERROR]: ERROR:  division by zero\n"), False),
        (OSError("[libpq] Execution error: ERROR:  canceling statement due to statement timeout\n"), True),
        (OSError("[libpq] could not receive data from server: Connection reset by peer"), True),
        (OSError("[SQLite] Type mismatch in column 2: expected INT64 but got STRING/BINARY"), False),
        (OSError("[SQLite] database is locked"), True),
        (OperationalError('IO: [libpq] Failed to connect: connection to server failed: Connection refused'), True),
        (OperationalError('IO: [libpq] Failed to connect: FATAL:  password authentication failed for user "x"'),
         False),
        (OSError(errno.ENOSPC, "No space left on device"), True),  # storage: maybe another worker
        (ConnectionResetError("reset"), True),
        (TimeoutError("timed out"), True),
        (FileNotFoundError("no such file"), False),
        (pa.ArrowInvalid("Rescaling Decimal value would cause data loss"), False),
        (pa.ArrowNotImplementedError("Unsupported cast"), False),
        (TypeError("unsupported operand"), False),  # a transform's bug happens again
        (KeyError("customer_email"), False),
        (AirflowNotFoundException("The conn_id `x` isn't defined"), False),
        (RequestInvalid([]), False),
        (DataNotExportable("amount", "holds NaN"), False),
        (MemoryError(), True),
        (RuntimeError("something unknown"), True),
    ],
)  # fmt: skip
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_driver_messages_lose_the_echoed_query() -> None:
    exc = _DriverError(
        'NOT_FOUND: Failed to prepare query: ERROR:  relation "nope" does not exist\nLINE 1: SELECT * FROM nope\n'
        "Query was: SELECT * FROM nope. SQLSTATE: 42P01",
        "42P01",
    )
    assert driver_message(exc) == 'relation "nope" does not exist'
    assert user_message("planning", exc) == (
        'planning failed (_DriverError: relation "nope" does not exist (SQLSTATE 42P01)); '
        "not retried: it would fail the same way again"
    )
    leaked = ConnectionError("could not connect to postgresql://app:s3cret@db.example.com/prod")
    assert "s3cret" not in user_message("batch 1", leaked)
