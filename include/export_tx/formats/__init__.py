"""File formats: one module per format, each a :class:`Format`: Parquet (the default), CSV and
JSON Lines (each also gzip-compressed).

A format writes a batch's rows as a part, merges the parts in order into the file, counts a
file's rows (the merge's check), and names its media type and file suffix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from export_tx.formats.csv import CSV, CSV_GZ
from export_tx.formats.jsonl import JSONL, JSONL_GZ
from export_tx.formats.parquet import PARQUET

if TYPE_CHECKING:
    import pyarrow as pa


class Format(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def media_type(self) -> str: ...

    @property
    def suffix(self) -> str: ...

    def check(self, schema: pa.Schema) -> None:
        """Refuse (DataNotExportable, naming the column) a schema this format cannot hold exactly;
        called when the export is planned, before any row is read."""
        ...

    def write_part(self, sink: Any, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """Write ``batches`` (the plan's ``schema``) to ``sink``; return the rows written."""
        ...

    def merge_parts(self, sink: Any, schema: pa.Schema, parts: Iterable[Any]) -> int:
        """Concatenate ``parts`` (binary files, opened lazily, in order; closed here) into ``sink``."""
        ...

    def count_rows(self, source: Any) -> int:
        """The rows of a file written by this format (``source``: a binary, seekable file)."""
        ...


FORMATS: dict[str, Format] = {f.name: f for f in (PARQUET, CSV, CSV_GZ, JSONL, JSONL_GZ)}
DEFAULT = PARQUET.name
#: The names a request may give (``format``), the default first.
NAMES = tuple(FORMATS)


def get(name: str = DEFAULT) -> Format:
    """The format called ``name``; KeyError for any other."""
    return FORMATS[name]
