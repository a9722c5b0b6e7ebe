"""CSV (RFC 4180), plain or gzip-compressed: every value exactly as text.

* One header line (the column names), then one record per row, lines ending in CRLF.
* Text and every value written as text (decimals, times, binary, nested values) is quoted, a
  quote inside doubled; a line break inside a value stays inside its quotes.
* NULL is an empty, unquoted field; an empty string is ``""``: the two stay apart.
* Integers, booleans and floats are unquoted: their digits, ``true``/``false``, the shortest
  text that reads back as the same float (``nan``, ``inf``).
* Decimals: their exact decimal text at the column's scale, never through a float.
* Dates, times, timestamps: ISO 8601 (``2024-01-02T03:04:05.123456``, ``…Z`` in UTC, else
  with the offset).
* **Binary: base64** (RFC 4648, padded). ``uuid``: its canonical text; ``json``: its JSON text;
  lists and structs (arrays, intervals): JSON text (see :mod:`export_tx.formats.text`).

A column of a type with no exact text is refused before any work (:meth:`CsvFormat.check`).

Parts carry no header: the merge writes it once, then copies the parts as they are (gzip: the
header is a gzip member of its own and each part one more; a multi-member gzip file is one
valid gzip file). Memory: one record batch while writing, one copy chunk while merging.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from export_tx.formats import text

if TYPE_CHECKING:
    import pyarrow as pa

EOL = "\r\n"


def _write_options(header: bool) -> Any:
    import pyarrow.csv as pcsv

    # "needed": every string-typed column quoted (so "" differs from NULL), numbers bare.
    return pcsv.WriteOptions(include_header=header, quoting_style="needed", eol=EOL)


def _native(t: pa.DataType) -> bool:
    """Types Arrow's CSV writer already writes exactly and unquoted (or as quoted text)."""
    import pyarrow as pa
    import pyarrow.types as pt

    if isinstance(t, pa.BaseExtensionType):
        return False
    return pt.is_boolean(t) or pt.is_integer(t) or pt.is_floating(t) or pt.is_string(t) or pt.is_large_string(t)


def csv_schema(schema: pa.Schema) -> pa.Schema:
    """The columns as written: native types kept, every other column as text."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, f.type if _native(f.type) else pa.string()) for f in schema])


def csv_column(array: pa.Array, column: str) -> pa.Array:
    """One column of a batch as the CSV writer gets it (see the module's rules)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    t = array.type
    if _native(t):
        return array
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return pa.array(text.uuid_texts(array), pa.string())
        return pa.array(text.json_texts(array, column, one_line=False), pa.string())
    if pt.is_null(t):
        return pc.cast(array, pa.string())
    if pt.is_decimal(t):
        return pa.array(text.decimal_texts(array), pa.string())
    if pt.is_date(t) or pt.is_time(t) or pt.is_timestamp(t):
        return text.iso_texts(array)
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return pa.array(text.base64_texts(array), pa.string())
    return pa.array(text.json_fragments(array, column), pa.string())


def encode_batch(batch: pa.RecordBatch, out_schema: pa.Schema, header: bool = False) -> bytes:
    """One record batch as CSV records (no header unless asked)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    arrays = [csv_column(batch.column(i), f.name) for i, f in enumerate(batch.schema)]
    buffer = io.BytesIO()
    pcsv.write_csv(pa.RecordBatch.from_arrays(arrays, schema=out_schema), buffer, _write_options(header))
    return buffer.getvalue()


def header_bytes(schema: pa.Schema) -> bytes:
    """The header line of ``schema``'s file (column names quoted as Arrow quotes them)."""
    out = csv_schema(schema)
    return encode_batch(_empty(out), out, header=True)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def write_csv(sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch], gzipped: bool = False) -> int:
    """Write the records of ``batches`` (no header) to ``sink``; return the rows written."""
    out_schema = csv_schema(schema)
    target = text.GzipMember(sink) if gzipped else sink
    rows = 0
    try:
        for batch in batches:
            if batch.num_rows:
                target.write(encode_batch(batch, out_schema))
                rows += batch.num_rows
    finally:
        if gzipped:
            target.close()
    return rows


def merge_csv(sink: Any, schema: pa.Schema, parts: Iterable[Any], gzipped: bool = False) -> int:
    """The header once, then each part's records as they are; return the records copied."""
    header = header_bytes(schema)
    sink.write(text.gzip_bytes(header) if gzipped else header)
    counter = text.RecordCounter(quoted=True)
    for source in parts:
        with source:
            text.copy_counting(source, sink, counter, gzipped)
    return counter.total()


def count_csv(source: Any, gzipped: bool = False) -> int:
    """Rows of a merged file: its records (counted by their quoting, see
    :class:`~export_tx.formats.text.RecordCounter`) less the header."""
    return max(text.count_records(source, quoted=True, gzipped=gzipped) - 1, 0)


@dataclass(frozen=True)
class CsvFormat:
    """CSV (RFC 4180); ``gzipped``: the same file, gzip-compressed."""

    name: str = "csv"
    media_type: str = "text/csv"
    suffix: str = ".csv"
    gzipped: bool = False

    def check(self, schema: pa.Schema) -> None:
        text.check(schema, "CSV")

    def write_part(self, sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        return write_csv(sink, schema, batches, self.gzipped)

    def merge_parts(self, sink: Any, schema: pa.Schema, parts: Iterable[Any]) -> int:
        return merge_csv(sink, schema, parts, self.gzipped)

    def count_rows(self, source: Any) -> int:
        return count_csv(source, self.gzipped)


CSV = CsvFormat()
CSV_GZ = CsvFormat(name="csv.gz", media_type="application/gzip", suffix=".csv.gz", gzipped=True)
