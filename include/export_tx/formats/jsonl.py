"""JSON Lines, plain or gzip-compressed: one JSON object per row, every value exact.

* One line per row (``\\n``), an object whose keys are the columns, in column order.
* Integers (int64 too) are JSON numbers; booleans ``true``/``false``; NULL is ``null``.
* Floats: the shortest number that reads back as the same float; NaN and the infinities, which
  JSON numbers cannot hold, as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
* **Decimals are JSON strings** of their exact text (``"-12.3400"``): most JSON readers read
  every number as a 64-bit float, which would silently lose digits of a ``numeric(38,10)``.
* Dates, times, timestamps: ISO 8601 strings (``…Z`` in UTC, else with the offset).
* **Binary: base64 strings** (RFC 4648, padded). ``uuid``: its canonical text; ``json``: the
  source's JSON value itself (so a JSON ``null`` value reads as a NULL does); lists and structs
  (arrays, intervals): JSON arrays and objects.

A column of a type with no exact JSON form is refused before any work (:meth:`JsonlFormat.check`).
Parts are merged by concatenation (gzip: of their gzip members). Memory: one record batch while
writing, one copy chunk while merging.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from export_tx.formats import text

if TYPE_CHECKING:
    import pyarrow as pa


def encode_batch(batch: pa.RecordBatch) -> bytes:
    """One record batch as JSON lines."""
    keys = [json.dumps(f.name, ensure_ascii=False) + ":" for f in batch.schema]
    if not keys:
        return b"{}\n" * batch.num_rows
    columns = [
        [key + ("null" if v is None else v) for v in text.json_fragments(batch.column(i), batch.schema[i].name)]
        for i, key in enumerate(keys)
    ]
    return "".join(["{" + ",".join(row) + "}\n" for row in zip(*columns, strict=True)]).encode("utf-8")


def write_jsonl(sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch], gzipped: bool = False) -> int:
    """Write ``batches`` as JSON lines to ``sink``; return the rows written."""
    target = text.GzipMember(sink) if gzipped else sink
    rows = 0
    try:
        for batch in batches:
            if batch.num_rows:
                target.write(encode_batch(batch))
                rows += batch.num_rows
    finally:
        if gzipped:
            target.close()
    return rows


def merge_jsonl(sink: Any, parts: Iterable[Any], gzipped: bool = False) -> int:
    """The parts one after the other, as they are; return the lines copied."""
    counter = text.RecordCounter(quoted=False)
    for source in parts:
        with source:
            text.copy_counting(source, sink, counter, gzipped)
    return counter.total()


@dataclass(frozen=True)
class JsonlFormat:
    """JSON Lines; ``gzipped``: the same file, gzip-compressed."""

    name: str = "jsonl"
    media_type: str = "application/x-ndjson"
    suffix: str = ".jsonl"
    gzipped: bool = False

    def check(self, schema: pa.Schema) -> None:
        text.check(schema, "JSON Lines")

    def write_part(self, sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        return write_jsonl(sink, schema, batches, self.gzipped)

    def merge_parts(self, sink: Any, schema: pa.Schema, parts: Iterable[Any]) -> int:
        return merge_jsonl(sink, parts, self.gzipped)

    def count_rows(self, source: Any) -> int:
        # JSON escapes a line break inside a string: every line is one row.
        return text.count_records(source, quoted=False, gzipped=self.gzipped)


JSONL = JsonlFormat()
JSONL_GZ = JsonlFormat(name="jsonl.gz", media_type="application/gzip", suffix=".jsonl.gz", gzipped=True)
