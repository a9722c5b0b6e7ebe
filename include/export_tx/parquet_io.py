"""Arrow → Parquet, in bounded memory: the plan's types, the transform, row groups, merge."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from export_tx.conversions import conform, source_batches
from export_tx.definition import ExportDefinition
from export_tx.errors import ExportError
from export_tx.settings import ROW_GROUP_ROWS

if TYPE_CHECKING:
    import pyarrow as pa

    from export_tx.planning import SchemaPlan

COMPRESSION = "zstd"


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
                        f"part {index + 1} has another schema than the export's plan "
                        f"({part.schema_arrow} vs {schema}); nothing was published"
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
