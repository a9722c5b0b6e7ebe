"""The ADBC driver manager, used directly: connections, prepared statements with one row of bound
parameters, and results as Arrow record batch readers.

Not the DB-API layer: ``adbc_driver_manager.dbapi`` imports ``pyarrow.dataset``, which imports
pandas — about 0.8 s of start-up in every task process that reads a source, for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


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
def connection(database: Any) -> Iterator[Any]:
    """An ADBC connection on ``database`` (a driver's ``connect(uri)``); both closed after."""
    import adbc_driver_manager as adbc

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


@contextmanager
def query(conn: Any, sql: str, parameters: pa.RecordBatch | None = None) -> Iterator[pa.RecordBatchReader]:
    """The result of ``sql`` as a stream; the reader, then the statement, are closed after."""
    stmt = statement(conn, sql, parameters)
    try:
        reader = result_stream(stmt)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        stmt.close()
