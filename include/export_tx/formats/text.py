"""What the text formats (CSV, JSON Lines) share: the exact text of every value, the types that
have one, gzip, and counting while copying.

Every value is written as text that states it exactly, column by column in Arrow (one record
batch at a time), never through a lossy Python type:

* integers and booleans: their digits, ``true``/``false``;
* floats: the shortest text that reads back as the same float (``nan``/``inf`` in CSV; ``NaN``,
  ``Infinity``, ``-Infinity`` as JSON strings, since JSON numbers cannot hold them);
* decimals: their plain decimal text at the column's scale (``-12.3400``), never through a float;
* dates, times, timestamps: ISO 8601 (``2024-01-02T03:04:05.123456``; a time zone's timestamps
  end in ``Z`` for UTC, else in their offset ``+05:30``);
* binary: standard base64 (RFC 4648, with padding);
* ``arrow.uuid``: the canonical 8-4-4-4-12 text; ``arrow.json``: the source's own JSON text
  (in JSON Lines, the JSON value itself: a JSON ``null`` then reads as a NULL would);
* lists and structs (PostgreSQL arrays, intervals): JSON arrays and objects, each element by the
  JSON Lines rules.

A column of any other type (durations, maps, dictionaries, half floats, other extension types)
is refused before any work by :func:`check`, naming the column.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from export_tx.errors import DataNotExportable, IntegrityError

if TYPE_CHECKING:
    import pyarrow as pa

#: Bytes read or written at once when parts are copied and counted.
CHUNK = 1 << 20
#: zlib's own default: level 9 costs about three times the time for a few per cent.
GZIP_LEVEL = 6

_TEXT_EXTENSIONS = ("arrow.uuid", "arrow.json")


def problem(t: pa.DataType) -> str | None:
    """Why values of type ``t`` have no exact text here; None when they have."""
    import pyarrow as pa
    import pyarrow.types as pt

    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name in _TEXT_EXTENSIONS:
            return None
        return f"the extension type {t.extension_name} has no text form here"
    if pt.is_float16(t):
        return "half floats have no exact text form here"
    if (
        pt.is_null(t)
        or pt.is_boolean(t)
        or pt.is_integer(t)
        or pt.is_floating(t)
        or pt.is_decimal(t)
        or pt.is_string(t)
        or pt.is_large_string(t)
        or pt.is_binary(t)
        or pt.is_large_binary(t)
        or pt.is_fixed_size_binary(t)
        or pt.is_date(t)
        or pt.is_time(t)
        or pt.is_timestamp(t)
    ):
        return None
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        inner = problem(t.value_type)
        return None if inner is None else f"its elements: {inner}"
    if pt.is_struct(t):
        for i in range(t.num_fields):
            inner = problem(t.field(i).type)
            if inner is not None:
                return f"its field {t.field(i).name!r}: {inner}"
        return None
    return f"{t} has no exact text form here"


def check(schema: pa.Schema, format_name: str) -> None:
    """Refuse (before any work) a schema with a column whose values have no exact text."""
    for field in schema:
        reason = problem(field.type)
        if reason is not None:
            raise DataNotExportable(
                field.name,
                f"{reason}, so a {format_name} file cannot hold it exactly; choose the format parquet, "
                "or convert the column in the definition (e.g. to string)",
            )


# -- values as text -------------------------------------------------------------------------------


def iso_texts(array: pa.Array) -> pa.Array:
    """Dates, times and timestamps as ISO 8601 text (string array, nulls kept)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    text = pc.cast(array, pa.string())
    if pt.is_timestamp(array.type):
        # Arrow writes "2024-01-02 03:04:05.123456[Z|+0530]": ISO 8601 wants the T, and its
        # extended format the colon in the offset.
        text = pc.replace_substring(text, " ", "T", max_replacements=1)
        if array.type.tz is not None:
            text = pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")
    return text


def base64_texts(array: pa.Array) -> list[str | None]:
    import base64

    return [None if v is None else base64.b64encode(v).decode("ascii") for v in array.to_pylist()]


def uuid_texts(array: pa.Array) -> list[str | None]:
    import uuid

    # The storage (16 bytes), not to_pylist() of the extension array: one path whatever the pyarrow.
    raw = array.storage.to_pylist()
    return [None if v is None else str(uuid.UUID(bytes=v)) for v in raw]


def decimal_texts(array: pa.Array) -> list[str | None]:
    """Decimals as plain decimal text at the column's scale (``-0.0000000001``, ``1.50``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pc.cast(array, pa.string()).to_pylist()
    if not any(v is not None and "E" in v for v in texts):
        return texts
    # Arrow writes tiny (and negative-scale) values in scientific notation: their Decimal, whose
    # exponent is the column's scale, written out ("f") keeps every digit and the scale.
    return [None if v is None else format(v, "f") for v in array.to_pylist()]


def json_texts(array: pa.Array, column: str, one_line: bool = True) -> list[str | None]:
    """An ``arrow.json`` column's own text, checked to be JSON (a file must never be corrupt).

    ``one_line``: a raw line break can only be insignificant whitespace in JSON text (inside a
    string it must be escaped), so it becomes a space: the value stays the same, and a JSON line
    stays one line.
    """
    out: list[str | None] = []
    for value in array.storage.to_pylist():
        if value is None:
            out.append(None)
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            raise DataNotExportable(column, f"a value is not JSON text ({exc.__class__.__name__})") from None
        if one_line and ("\n" in value or "\r" in value):
            value = value.replace("\r", " ").replace("\n", " ")
        out.append(value)
    return out


_FLOAT_SPECIAL = {"nan": '"NaN"', "-nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}


def json_fragments(array: pa.Array, column: str) -> list[str | None]:
    """Each value of ``array`` as JSON text (None for a null), by the rules of the module."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return [None if v is None else f'"{v}"' for v in uuid_texts(array)]
        return json_texts(array, column)
    if pt.is_null(t):
        return [None] * len(array)
    if pt.is_boolean(t) or pt.is_integer(t):
        return pc.cast(array, pa.string()).to_pylist()
    if pt.is_floating(t):
        return [None if v is None else _FLOAT_SPECIAL.get(v, v) for v in pc.cast(array, pa.string()).to_pylist()]
    if pt.is_decimal(t):
        # A JSON number is read as a float by most readers (JSON.parse, pandas): 0.1 + 38 digits would
        # silently lose digits. The decimal's text as a string keeps every digit for any reader.
        return [None if v is None else f'"{v}"' for v in decimal_texts(array)]
    if pt.is_string(t) or pt.is_large_string(t):
        return [None if v is None else json.dumps(v, ensure_ascii=False) for v in array.to_pylist()]
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return [None if v is None else f'"{v}"' for v in base64_texts(array)]
    if pt.is_date(t) or pt.is_time(t) or pt.is_timestamp(t):
        return [None if v is None else f'"{v}"' for v in iso_texts(array).to_pylist()]
    valid = array.is_valid().to_pylist()
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        values = json_fragments(array.flatten(), column)
        if pt.is_fixed_size_list(t):
            size = t.list_size
            bounds = [(i * size, (i + 1) * size) for i in range(len(array))]
        else:
            offsets = array.offsets.to_pylist()
            base = offsets[0]
            bounds = [(lo - base, hi - base) for lo, hi in zip(offsets, offsets[1:], strict=False)]
        return [
            "[" + ",".join("null" if v is None else v for v in values[lo:hi]) + "]" if ok else None
            for ok, (lo, hi) in zip(valid, bounds, strict=True)
        ]
    if pt.is_struct(t):
        keys = [json.dumps(t.field(i).name, ensure_ascii=False) + ":" for i in range(t.num_fields)]
        children = [json_fragments(child, column) for child in array.flatten()]
        out: list[str | None] = []
        for row, ok in enumerate(valid):
            if not ok:
                out.append(None)
                continue
            members = (k + ("null" if c[row] is None else str(c[row])) for k, c in zip(keys, children, strict=True))
            out.append("{" + ",".join(members) + "}")
        return out
    raise DataNotExportable(column, f"{t} has no exact text form here")  # check() refuses it first


# -- gzip and counting ----------------------------------------------------------------------------


class GzipMember:
    """A writable that gzip-compresses into ``sink`` as one gzip member (closed: the member ends;
    ``sink`` stays open). ``mtime=0``: the same rows give the same bytes."""

    def __init__(self, sink: Any) -> None:
        self._file = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def chunks(source: Any) -> Iterator[bytes]:
    """A binary file's bytes, a chunk at a time."""
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return
        yield chunk


def gunzipped(compressed: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a stream of gzip members (one or several, concatenated), a bounded chunk at a
    time; a truncated or corrupt member raises :class:`IntegrityError`."""
    member = zlib.decompressobj(wbits=31)
    started = False
    for chunk in compressed:
        data = chunk
        while data:
            started = True
            try:
                out = member.decompress(data, CHUNK)
                if out:
                    yield out
                # All input taken but the output limit reached: zlib may still hold output.
                while len(out) == CHUNK and not member.eof and not member.unconsumed_tail:
                    out = member.decompress(b"", CHUNK)
                    if out:
                        yield out
            except zlib.error as exc:
                raise IntegrityError(f"a gzip part is corrupt ({exc}); nothing was published") from None
            if member.eof:
                data = member.unused_data  # the next member, if any
                member = zlib.decompressobj(wbits=31)
                started = False
            else:
                data = member.unconsumed_tail
    if started:
        raise IntegrityError("a gzip part ends inside a member (truncated); nothing was published")


class RecordCounter:
    """Counts the records of RFC 4180 CSV text fed in pieces, by its quoting: a line break ends a
    record only outside quotes (a doubled quote inside a quoted field toggles twice), so fields
    with embedded line breaks count once. ``quoted=False``: every line break ends a record (JSON
    Lines, whose strings escape line breaks)."""

    def __init__(self, quoted: bool) -> None:
        self.quoted = quoted
        self.records = 0
        self.inside = False  # within a quoted field at the end of what was fed
        self.last = b"\n"

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.last = data[-1:]
        if not self.quoted:
            self.records += data.count(b"\n")
            return
        pieces = data.split(b'"')
        # Pieces alternate outside/inside quotes, starting from the state the last piece left.
        start = 1 if self.inside else 0
        self.records += sum(p.count(b"\n") for p in pieces[start::2])
        if (len(pieces) - 1) % 2:
            self.inside = not self.inside

    def total(self) -> int:
        """Records seen, a last one without its line break included."""
        return self.records + (0 if self.last == b"\n" else 1)


def copy_counting(source: Any, sink: Any, counter: RecordCounter, gzipped: bool) -> None:
    """Copy ``source`` to ``sink`` byte for byte, counting its records (decompressed to count, the
    bytes copied as they are)."""
    if not gzipped:
        for chunk in chunks(source):
            sink.write(chunk)
            counter.feed(chunk)
        return

    def tee() -> Iterator[bytes]:
        for chunk in chunks(source):
            sink.write(chunk)
            yield chunk

    for text in gunzipped(tee()):
        counter.feed(text)


def count_records(source: Any, quoted: bool, gzipped: bool) -> int:
    counter = RecordCounter(quoted)
    stream = gunzipped(chunks(source)) if gzipped else chunks(source)
    for data in stream:
        counter.feed(data)
    return counter.total()
