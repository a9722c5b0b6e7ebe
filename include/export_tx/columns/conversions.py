"""From what the driver streams to the file's types, value by value exact or refused.

The ADBC drivers hand over Arrow close to the source's types; what is left is done here:
PostgreSQL ``numeric`` arrives as text and becomes a decimal (a value that does not fit — NaN,
more decimal places — stops the export naming the column, never rounds); ``interval`` becomes
(months, days, microseconds); uuid and JSON keep their Parquet logical types; dates and
timestamps are checked against what the driver can carry (it overflows on ``infinity``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from export_tx.errors import DataNotExportable

if TYPE_CHECKING:
    from export_tx.definition import ExportDefinition
    from export_tx.planning import SchemaPlan

if TYPE_CHECKING:
    import pyarrow as pa

    from export_tx.columns.typemap import ColumnSpec

# PostgreSQL's earliest timestamp and date (4714-11-24 BC), since 1970. The ADBC driver turns
# 'infinity' and timestamps past 294246 AD into values below these (an overflow), never above.
PG_MIN_TIMESTAMP_US = -210_866_803_200_000_000
PG_MIN_DATE_DAYS = -2_440_588
#: The column the SQLite batch query adds to mark its typed first row.
SQLITE_MARK = "__export_tx_first"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def to_type(array: pa.Array, target: pa.DataType, column: str) -> pa.Array:
    """``array`` as ``target``, every value exact; raises :class:`DataNotExportable` otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    source = array.type
    if source.equals(target):
        return array
    if isinstance(target, pa.BaseExtensionType):
        storage = array.storage if isinstance(source, pa.BaseExtensionType) else array
        return pa.ExtensionArray.from_storage(target, to_type(storage, target.storage_type, column))
    if isinstance(source, pa.BaseExtensionType):  # PostgreSQL numeric (text), or uuid/json as storage
        return to_type(array.storage, target, column)
    if pt.is_null(target):
        if array.null_count != len(array):
            raise DataNotExportable(column, "now holds values, but it held none when the export was planned")
        return pa.nulls(len(array))
    if pt.is_null(source):
        return pa.nulls(len(array), target)
    if pt.is_interval(source) and pt.is_struct(target):
        return interval_struct(array, target)
    if pt.is_list(source) and pt.is_list(target):
        values = to_type(array.values, target.value_type, column)
        mask = array.is_null() if array.null_count else None
        return pa.ListArray.from_arrays(array.offsets, values, type=target, mask=mask)
    try:
        return pc.cast(array, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataNotExportable(column, f"a value does not convert exactly to {target}: {_short(exc)}") from exc


def interval_struct(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``month_day_nano_interval`` → struct(months, days, microseconds); PostgreSQL keeps
    microseconds, so the nanoseconds the driver reports divide exactly."""
    import numpy as np
    import pyarrow as pa

    layout = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanoseconds", "<i8")])
    raw = np.frombuffer(array.buffers()[1], dtype=layout, count=array.offset + len(array))[array.offset :]
    micros = raw["nanoseconds"] // 1000
    mask = array.is_null() if array.null_count else None
    children = [pa.array(raw["months"], pa.int32()), pa.array(raw["days"], pa.int32()), pa.array(micros, pa.int64())]
    return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)


def check_pg_time_range(array: pa.Array, column: str) -> None:
    """Refuse what the PostgreSQL driver cannot carry: ``infinity`` and years past 294246."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    values = array
    while pt.is_list(values.type):
        values = values.values
    if isinstance(values.type, pa.BaseExtensionType) or len(values) == values.null_count:
        return
    if pt.is_timestamp(values.type):
        low, limit, what = pc.min(values.view(pa.int64())).as_py(), PG_MIN_TIMESTAMP_US, "timestamp"
    elif pt.is_date32(values.type):
        low, limit, what = pc.min(values.view(pa.int32())).as_py(), PG_MIN_DATE_DAYS, "date"
    else:
        return
    if low is not None and low < limit:
        raise DataNotExportable(
            column,
            f"holds 'infinity' or a {what} after the year 294246, which a Parquet {what} cannot hold; "
            "declare the column as string in the definition's columns (PostgreSQL's exact text), "
            "or convert it in the query",
        )


def source_batches(
    reader: pa.RecordBatchReader, columns: Sequence[ColumnSpec], schema: pa.Schema, dialect: str
) -> Iterator[pa.RecordBatch]:
    """The driver's batches as ``schema`` (the plan's source types), column by column exact."""
    import pyarrow as pa
    import pyarrow.types as pt

    first = True
    for batch in reader:
        if dialect == "sqlite":
            if first:
                # The first row is the typed sentinel of the batch query, never data.
                marks = batch.column(0).to_pylist()[:1]
                if marks != [0]:
                    raise RuntimeError("the SQLite batch query lost its typed first row")
                batch = batch.slice(1)
            first = False
            batch = batch.drop_columns([SQLITE_MARK])
        if batch.num_rows == 0:
            continue
        arrays = []
        for index, field in enumerate(schema):
            array = batch.column(index)
            if dialect == "postgresql" and (pt.is_timestamp(array.type) or pt.is_date(array.type) or
                                            pt.is_list(array.type)):  # fmt: skip
                check_pg_time_range(array, field.name)
            arrays.append(to_type(array, field.type, field.name))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch as ``schema``: its columns by name, in the schema's order, each converted exactly
    (a transform's output meets the schema the plan fixed)."""
    import pyarrow as pa

    names = batch.schema.names
    columns = []
    for target in schema:
        if target.name not in names:
            raise DataNotExportable(target.name, "the definition's transform did not return this column")
        columns.append(to_type(batch.column(names.index(target.name)), target.type, target.name))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([empty_array(f.type) for f in schema], schema=schema)


def empty_array(t: pa.DataType) -> pa.Array:
    """A zero-length array of ``t``, built from buffers: ``pa.array([], t)`` makes pyarrow import
    pandas (0.4 s of a planning task) to ask whether ``[]`` is a pandas object."""
    import pyarrow as pa

    if isinstance(t, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(t, empty_array(t.storage_type))
    if pa.types.is_dictionary(t) or pa.types.is_union(t) or t.num_buffers == 0:
        return pa.array([], t)  # rare here: the plain way
    children = [empty_array(t.field(i).type) for i in range(t.num_fields)]
    # Validity needs no buffer; an offsets buffer needs its one leading zero; data may be empty.
    buffers = [None] + [pa.py_buffer(bytes(8)) for _ in range(t.num_buffers - 1)]
    array = pa.Array.from_buffers(t, 0, buffers, children=children or None)
    array.validate(full=True)
    return array


def processed(
    definition: ExportDefinition, columns: SchemaPlan, reader: pa.RecordBatchReader
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The driver's stream as the plan's types, transformed, with the file's schema known up front."""
    out = columns.output_schema()
    source = source_batches(reader, columns.columns, columns.source_schema(), columns.dialect)

    def gen() -> Iterator[pa.RecordBatch]:
        for batch in source:
            if definition.transform is not None:
                batch = definition.transform(batch)
            if not batch.schema.equals(out, check_metadata=False):
                batch = conform(batch, out)
            yield batch

    return out, gen()
