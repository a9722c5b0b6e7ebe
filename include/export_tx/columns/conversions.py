"""From what the driver streams to the file's types, value by value exact or refused.

The ADBC drivers hand over Arrow close to the source's types; what is left is done here:
PostgreSQL ``numeric`` arrives as text and becomes a decimal (a value that does not fit — NaN,
more decimal places — stops the export naming the column, never rounds); ``interval`` becomes
(months, days, microseconds); uuid and JSON keep their Parquet logical types; dates and
timestamps are checked against what the driver can carry (it overflows on ``infinity``).

Then the definition's transform. An Arrow ``transform`` fixed the file's columns at planning and
its batches are conformed to them. A ``pandas_transform`` receives each batch as a DataFrame of
``pd.ArrowDtype`` columns (every value exact) and must give back the plan's columns with their
types: what it returns is checked column by column (:func:`pandas_transformed`) before
``RecordBatch.from_pandas``, so a dropped, added, renamed or retyped column is named, never
written, and a rebuilt column is converted back only where every value fits its type exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from export_tx.errors import DataNotExportable, DefinitionInvalid, ExportTxError, FieldError, shown

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
    apply = batch_transform(definition, out)

    def gen() -> Iterator[pa.RecordBatch]:
        for batch in source:
            if apply is not None:
                batch = apply(batch)
            if not batch.schema.equals(out, check_metadata=False):
                batch = conform(batch, out)
            yield batch

    return out, gen()


def batch_transform(definition: ExportDefinition, out: pa.Schema) -> Callable[[pa.RecordBatch], pa.RecordBatch] | None:
    """What to apply to each batch: the Arrow transform as it is, the pandas one checked against
    ``out``, or None."""
    if definition.transform is not None:
        return definition.transform
    if definition.pandas_transform is not None:
        return lambda batch: pandas_transformed(definition, batch, out)
    return None


def pandas_transformed(definition: ExportDefinition, batch: pa.RecordBatch, out: pa.Schema) -> pa.RecordBatch:
    """``batch`` through the definition's pandas transform and back, as ``out`` exactly.

    Raises :class:`DefinitionInvalid` (field ``pandas_transform``) naming each column dropped,
    added, renamed or retyped, or rows added; :class:`DataNotExportable` for a rebuilt column
    holding a value its type cannot hold exactly.
    """
    import pyarrow as pa

    pd = _pandas()
    function = definition.pandas_transform
    assert function is not None
    frame = batch.to_pandas(types_mapper=pd.ArrowDtype)
    try:
        result = function(frame)
    except ExportTxError:
        raise
    except Exception as exc:
        raise _refused(definition, [f"failed on a batch ({type(exc).__name__}: {_short(exc)})"]) from exc
    if not isinstance(result, pd.DataFrame):
        raise _refused(definition, [f"must return a pandas DataFrame; it returned {type(result).__name__}"])
    problems = _column_problems(result, out)
    if problems:
        raise _refused(definition, problems)
    if len(result) > batch.num_rows:
        raise _refused(definition, [
            f"returned {len(result):,} rows for a batch of {batch.num_rows:,}: it may remove rows (a filter), "
            "never add them (the export's max_rows was checked on the source's count)"])  # fmt: skip
    result = result.reset_index(drop=True)  # a filter's gaps, a duplicate label: the file keeps no index
    kept = {}
    for target in out:
        series = result[target.name]
        dtype = series.dtype
        if isinstance(dtype, pd.ArrowDtype):
            kept[target.name] = series
            continue
        array = _from_python(series, target)
        kept[target.name] = pd.Series(pd.arrays.ArrowExtensionArray(array), index=series.index, copy=False)
    back = pa.RecordBatch.from_pandas(pd.DataFrame(kept), schema=out, preserve_index=False)
    if not back.schema.equals(out, check_metadata=False):  # from_pandas converted nothing: every type was checked
        raise RuntimeError("a pandas transform's result lost its checked types")
    return back


def _pandas() -> Any:
    """pandas, imported only when a pandas transform runs (the optional extra ``export-tx[pandas]``)."""
    import pandas

    return pandas


def _refused(definition: ExportDefinition, messages: list[str]) -> DefinitionInvalid:
    return DefinitionInvalid(definition.name, [FieldError("pandas_transform", m) for m in messages])


def _column_problems(result: Any, out: pa.Schema) -> list[str]:
    """Each column of ``result`` that is not one of ``out``'s with its type, as a sentence."""
    import pyarrow as pa

    pd = _pandas()
    labels = list(result.columns)
    problems = [f"column {shown(label)} is returned more than once" for label in
                dict.fromkeys(x for x in labels if labels.count(x) > 1)]  # fmt: skip
    missing = [name for name in out.names if name not in labels]
    added = [label for label in dict.fromkeys(labels) if label not in out.names]
    if len(missing) == 1 and len(added) == 1:
        problems.append(f"column {missing[0]!r} came back named {shown(added[0])}: keep the query's column names "
                        "(rename in the SQL)")  # fmt: skip
        missing, added = [], []
    for name in missing:
        hint = " (it is the frame's index: call reset_index())" if name in list(result.index.names) else ""
        problems.append(f"column {name!r} was dropped{hint}: return every column of the query (filter rows, "
                        "not columns; select columns in the SQL)")  # fmt: skip
    for label in added:
        problems.append(f"column {shown(label)} is not one of the export's columns: compute it in the SQL, "
                        "or use an Arrow transform, whose output fixes the columns at planning")  # fmt: skip
    if problems:
        return problems
    for target in out:
        dtype = result[target.name].dtype
        if isinstance(dtype, pd.ArrowDtype):
            got = dtype.pyarrow_dtype
        else:
            try:
                got = _inferred(result[target.name])
            except pa.ArrowException:
                problems.append(f"column {target.name!r} was {target.type} and came back as Python objects of "
                                f"mixed types (pandas dtype {dtype}): return values of one type")  # fmt: skip
                continue
            if got is None or _family(got) == _family(target.type):
                continue  # converted value by value, exactly or refused
        if not got.equals(target.type):
            what = str(got) if isinstance(dtype, pd.ArrowDtype) else f"{got} (pandas dtype {dtype})"
            problems.append(f"column {target.name!r} was {target.type} and came back as {what}: return the same "
                            "type, or declare the new type in columns (the transform then receives it "
                            "as that type)")  # fmt: skip
    return problems


def _inferred(series: Any) -> pa.DataType | None:
    """The Arrow type a column of pandas values becomes (None: all missing, so any type holds them).

    Raises ``pa.ArrowException`` when its values have no one type (mixed Python objects).
    """
    import pyarrow as pa

    array = pa.array(series, from_pandas=True)
    return None if pa.types.is_null(array.type) else array.type


def _from_python(series: Any, target: pa.Field) -> pa.Array:
    """A column the transform rebuilt outside Arrow (Python objects, NumPy, pandas' own dtypes) as
    ``target``'s type, every value exact or :class:`DataNotExportable`."""
    import pyarrow as pa

    pd = _pandas()
    if pd.api.types.is_float_dtype(series.dtype) and bool(series.isna().any()):
        raise DataNotExportable(target.name, f"the pandas transform returned it as {series.dtype} holding NaN, "
                                "which cannot tell NULL from NaN: keep the column's Arrow dtype")  # fmt: skip
    array = pa.array(series, from_pandas=True)
    return to_type(array, target.type, target.name)


def _family(t: pa.DataType) -> str:
    """What kind of value a type holds; within a kind a value converts exactly or is refused."""
    import pyarrow as pa
    import pyarrow.types as pt

    if isinstance(t, pa.BaseExtensionType):
        return _family(t.storage_type)
    for name, test in (("integer", pt.is_integer), ("floating", pt.is_floating), ("decimal", pt.is_decimal),
                       ("string", pt.is_string), ("string", pt.is_large_string), ("binary", pt.is_binary),
                       ("binary", pt.is_large_binary), ("binary", pt.is_fixed_size_binary),
                       ("boolean", pt.is_boolean), ("date", pt.is_date), ("time", pt.is_time),
                       ("duration", pt.is_duration)):  # fmt: skip
        if test(t):
            return name
    if pt.is_timestamp(t):
        return f"timestamp {t.tz}"
    return str(t)
