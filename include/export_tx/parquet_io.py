"""Arrow → Parquet, in bounded memory: conform, transform, buffer into row groups, merge."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from export_tx.definition import ExportDefinition
from export_tx.errors import ExportError
from export_tx.settings import ROW_GROUP_ROWS

if TYPE_CHECKING:
    import pyarrow as pa

COMPRESSION = "zstd"


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Select and cast the batch's columns to the declared schema, in its order."""
    import pyarrow as pa

    names = batch.schema.names
    columns = []
    for target in schema:
        if target.name not in names:
            raise ExportError(f"the query returned no column {target.name!r} that the definition's schema declares")
        column = batch.column(names.index(target.name))
        if isinstance(column.type, pa.ExtensionType):  # e.g. PostgreSQL numeric from ADBC
            column = column.storage
        if column.type != target.type:
            try:
                column = column.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ExportError(f"column {target.name!r} cannot be read as {target.type}: {exc}") from exc
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def source_schema(definition: ExportDefinition, reader_schema: pa.Schema) -> pa.Schema:
    return definition.schema() if definition.schema is not None else reader_schema


def output_schema(definition: ExportDefinition, schema: pa.Schema) -> pa.Schema:
    """The schema the export's files carry: the source schema after the transform."""
    if definition.transform is None:
        return schema
    return definition.transform(_empty(schema)).schema


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def processed(definition: ExportDefinition, reader: pa.RecordBatchReader) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The stream after conforming and transforming, with its schema known up front."""
    schema = source_schema(definition, reader.schema)
    out = output_schema(definition, schema)

    def gen() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            batch = conform(batch, schema) if definition.schema is not None else batch
            if definition.transform is not None:
                batch = definition.transform(batch)
            if batch.schema != out:
                batch = conform(batch, out)
            yield batch

    return out, gen()


def write_parquet(
    sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch], row_group_rows: int = ROW_GROUP_ROWS
) -> int:
    """Write record batches as row groups of ~``row_group_rows``; return the rows written.

    Memory is bounded by one row group: fetched batches are buffered only until a group is full.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    buffered: list[pa.RecordBatch] = []
    buffered_rows = 0
    with pq.ParquetWriter(sink, schema, compression=COMPRESSION) as writer:
        for batch in batches:
            buffered.append(batch)
            buffered_rows += batch.num_rows
            if buffered_rows >= row_group_rows:
                writer.write_table(pa.Table.from_batches(buffered, schema), row_group_size=row_group_rows)
                rows += buffered_rows
                buffered, buffered_rows = [], 0
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered, schema), row_group_size=row_group_rows)
            rows += buffered_rows
    return rows


def copy_row_groups(sink: Any, schema: pa.Schema, parts: Iterable[Any], row_group_rows: int = ROW_GROUP_ROWS) -> int:
    """Concatenate Parquet parts (binary files, opened lazily in order, closed here) into ``sink``; return the rows
    written. Every part must carry ``schema``. Small row groups (parts of small batches) are
    gathered into groups of ~``row_group_rows``; memory stays bounded by about one group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    pending: list[pa.Table] = []
    pending_rows = 0
    with pq.ParquetWriter(sink, schema, compression=COMPRESSION) as writer:

        def flush() -> None:
            nonlocal pending, pending_rows
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=max(pending_rows, 1))
                pending, pending_rows = [], 0

        for index, source in enumerate(parts):
            with source:
                part = pq.ParquetFile(source)
                if not part.schema_arrow.equals(schema, check_metadata=False):
                    raise ExportError(
                        f"part {index + 1} has another schema than the export "
                        f"({part.schema_arrow} vs {schema}); declare the definition's schema"
                    )
                for group in range(part.num_row_groups):
                    table = part.read_row_group(group)
                    if pending_rows and pending_rows + table.num_rows > row_group_rows:
                        flush()
                    pending.append(table)
                    pending_rows += table.num_rows
                    rows += table.num_rows
        flush()
    return rows


def schema_description(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]
