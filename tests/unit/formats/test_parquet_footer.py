"""The Thrift compact-protocol codec and the footer surgery behind a byte-copy merge of Parquet files."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_tx.errors import ExportError, ThriftError
from export_tx.formats.parquet_footer import (
    BINARY,
    BOOL,
    BYTE,
    DOUBLE,
    I16,
    I32,
    I64,
    LIST,
    MAP,
    SET,
    STRUCT,
    TRUE,
    Container,
    Field,
    Mapping,
    Splicer,
    Struct,
    decode,
    decode_exact,
    encode,
    read_footer,
    require_same,
)

# -- helpers shared with test_parquet (formats) --------------------------------------------------------

RICH = pa.schema([
    ("id", pa.int64()), ("amount", pa.decimal128(12, 2)), ("name", pa.string()),
    ("at", pa.timestamp("us", tz="UTC")), ("flag", pa.bool_()), ("score", pa.float64()),
    ("tags", pa.list_(pa.string())), ("point", pa.struct([("x", pa.float64()), ("y", pa.int32())])),
    ("attrs", pa.map_(pa.string(), pa.int32())),
])  # fmt: skip


def rich_table(start: int, rows: int) -> pa.Table:
    """Every kind of column a footer describes: nulls, repeats (dictionary pages), nesting, decimals, tz."""
    ids = range(start, start + rows)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "amount": pa.array([None if i % 7 == 0 else Decimal(i % 10_000) / 100 for i in ids], pa.decimal128(12, 2)),
            "name": pa.array([f"name-{i % 50}" for i in ids]),
            "at": pa.array([datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1e6 + i for i in ids], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "flag": pa.array([i % 3 == 0 for i in ids]),
            "score": pa.array([i / 3 for i in ids]),
            "tags": pa.array([[f"t{i % 5}", None] if i % 4 else None for i in ids], pa.list_(pa.string())),
            "point": pa.array([{"x": i * 0.5, "y": i % 100} for i in ids], RICH.field("point").type),
            "attrs": pa.array([[("k", i % 9)] for i in ids], pa.map_(pa.string(), pa.int32())),
        },
        schema=RICH,
    )


def write_file(table: pa.Table, row_group_rows: int, **options: Any) -> bytes:
    """``table`` as Parquet the way the parts are written (zstd), plus writer ``options``."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_rows, compression="zstd", **options)
    return buffer.getvalue()


#: Page indexes, several pages a column chunk, and bloom filters on two columns.
INDEXED = {
    "write_page_index": True,
    "data_page_size": 2048,
    "bloom_filter_options": {"id": {"ndv": 2000, "fpp": 0.05}, "name": True},
}


def footer_bytes(data: bytes) -> bytes:
    length = struct.unpack("<I", data[-8:-4])[0]
    return data[-8 - length : -8]


def with_metadata(data: bytes, metadata: Struct) -> bytes:
    """The same file with another footer."""
    body_end = len(data) - 8 - len(footer_bytes(data))
    new = encode(metadata)
    return data[:body_end] + new + struct.pack("<I", len(new)) + b"PAR1"


def check_layout(data: bytes) -> int:
    """Follow every offset of a file's footer, page index and bloom filters to what must lie there;
    return how many pages the offset indexes listed."""
    metadata = decode_exact(footer_bytes(data))
    pages = 0
    for group in metadata.get(4).items:  # type: ignore[union-attr]
        for chunk in group.get(1).items:
            meta = chunk.get(3)
            first_page = meta.get(11) or meta.get(9)
            header, _ = decode(data, first_page)
            assert header.get(1) in (0, 2, 3)  # DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2
            if chunk.get(4) is not None:
                start, length = chunk.get(4), chunk.get(5)
                index = decode_exact(data[start : start + length])
                locations = index.get(1).items
                assert locations[0].get(1) == meta.get(9)
                for location in locations:
                    page, end = decode(data, location.get(1))
                    assert end - location.get(1) + page.get(3) == location.get(2)  # header + compressed page
                    pages += 1
            if chunk.get(6) is not None:
                start, length = chunk.get(6), chunk.get(7)
                decode_exact(data[start : start + length])
            if meta.get(14) is not None:
                bloom, end = decode(data, meta.get(14))
                assert end - meta.get(14) + bloom.get(1) == meta.get(15)  # header + bitset
    return pages


# -- the codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [{}, {"write_statistics": False, "use_dictionary": False}, INDEXED], ids=["plain", "bare", "indexed"]
)
def test_footers_pyarrow_writes_round_trip_byte_for_byte(options: dict[str, Any]) -> None:
    data = write_file(rich_table(0, 3000), 1000, **options)
    raw = footer_bytes(data)
    assert encode(decode_exact(raw)) == raw
    if options is INDEXED:
        assert check_layout(data) > 3 * len(RICH)  # several pages a column chunk
        metadata = decode_exact(raw)
        # Offset and column indexes (list<bool> null_pages among them) round-trip too.
        for chunk in (c for g in metadata.get(4).items for c in g.get(1).items):  # type: ignore[union-attr]
            for at, length in ((chunk.get(4), chunk.get(5)), (chunk.get(6), chunk.get(7))):
                assert encode(decode_exact(data[at : at + length])) == data[at : at + length]


def test_every_type_and_both_header_forms_round_trip() -> None:
    inner = Struct([Field(1, BOOL, False), Field(2, BYTE, -3)])
    value = Struct([
        Field(1, BOOL, True), Field(3, I16, -32768), Field(4, I32, 2**31 - 1), Field(5, I64, -(2**63)),
        Field(40, DOUBLE, 1.5),  # delta 35: long form
        Field(-2, BINARY, b"\x00\xffbytes"),  # a lower id: long form
        Field(7, LIST, Container(I32, list(range(20)))),  # 15+ elements: long size
        Field(8, SET, Container(TRUE, [1, 2, 2, 1])),  # booleans as their wire bytes
        Field(9, MAP, Mapping(BINARY, STRUCT, [(b"k", inner), (b"j", Struct([]))])),
        Field(10, MAP, Mapping(0, 0, [])),
        Field(11, LIST, Container(LIST, [Container(I64, [1]), Container(I64, [])])),
        Field(32767, STRUCT, inner),
    ])  # fmt: skip
    raw = encode(value)
    assert decode_exact(raw) == value
    assert encode(decode_exact(raw)) == raw


def test_unknown_fields_of_a_newer_writer_survive() -> None:
    data = write_file(rich_table(0, 10), 10)
    metadata = decode_exact(footer_bytes(data))
    metadata.fields.append(Field(99, STRUCT, Struct([Field(1, BINARY, b"future"), Field(2, BOOL, True)])))
    raw = encode(metadata)
    assert encode(decode_exact(raw)) == raw
    assert decode_exact(raw).get(99) == Struct([Field(1, BINARY, b"future"), Field(2, BOOL, True)])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x15", "cut short"),  # an i32 field without its value
        (b"\x18\x05ab", "cut short"),  # a 5-byte binary holding 2
        (b"\x1d\x00", "unknown compact type 13"),
        (b"\x16" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x1c" * 70, "nested deeper"),
        (b"\x00\x00", "1 bytes follow"),
    ],
)
def test_malformed_bytes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ThriftError, match=message):
        decode_exact(raw)


def _trees(depth: int = 2) -> st.SearchStrategy[Struct]:
    scalar = st.one_of(
        st.booleans().map(lambda b: (BOOL, b)),
        st.integers(-128, 127).map(lambda n: (BYTE, n)),
        st.integers(-(2**63), 2**63 - 1).map(lambda n: (I64, n)),
        st.floats(allow_nan=False).map(lambda x: (DOUBLE, x)),
        st.binary(max_size=20).map(lambda b: (BINARY, b)),
        st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20).map(lambda xs: (LIST, Container(I32, xs))),
    )
    member = scalar if depth == 0 else st.one_of(scalar, _trees(depth - 1).map(lambda s: (STRUCT, s)))
    return st.lists(st.tuples(st.integers(-(2**15), 2**15 - 1), member), max_size=6).map(
        lambda fields: Struct([Field(i, t, v) for i, (t, v) in fields])
    )


@settings(max_examples=150, deadline=None)
@given(_trees())
def test_any_tree_round_trips(tree: Struct) -> None:
    raw = encode(tree)
    assert decode_exact(raw) == tree
    assert encode(decode_exact(raw)) == raw


# -- footers -----------------------------------------------------------------------------------


def test_read_footer_refuses_what_a_byte_copy_cannot_merge() -> None:
    data = write_file(rich_table(0, 10), 10)
    encrypted = data[:-4] + b"PARE"
    with pytest.raises(ExportError, match="part 2 has an encrypted footer"):
        read_footer(io.BytesIO(encrypted), "part 2")
    with pytest.raises(ExportError, match="part 2 is not a Parquet file"):
        read_footer(io.BytesIO(b"PAR1" + b"\x00" * 20 + b"PAR2"), "part 2")
    with pytest.raises(ExportError, match="part 2 has an unreadable footer"):
        read_footer(io.BytesIO(data[:-12] + b"\xff\xff\xff\xff" + data[-8:]), "part 2")

    metadata = decode_exact(footer_bytes(data))
    metadata.get(4).items[0].get(1).items[0].fields.insert(0, Field(1, BINARY, b"elsewhere.parquet"))  # type: ignore[union-attr]
    with pytest.raises(ExportError, match="part 2 keeps its column data in another file"):
        read_footer(io.BytesIO(with_metadata(data, metadata)), "part 2")

    metadata = decode_exact(footer_bytes(data))
    metadata.fields.append(Field(8, STRUCT, Struct([Field(1, STRUCT, Struct([]))])))  # encryption_algorithm
    with pytest.raises(ExportError, match="part 2 has encrypted columns"):
        read_footer(io.BytesIO(with_metadata(data, metadata)), "part 2")


def test_require_same_names_what_differs() -> None:
    first = read_footer(io.BytesIO(write_file(rich_table(0, 10), 10)), "part 1")
    other_schema = read_footer(io.BytesIO(write_file(pa.table({"id": [1]}), 10)), "part 3")
    with pytest.raises(ExportError, match="part 3 has another Parquet schema than part 1"):
        require_same(first, other_schema, "part 3")
    tagged = read_footer(io.BytesIO(write_file(rich_table(0, 10).replace_schema_metadata({"k": "v"}), 10)), "part 2")
    with pytest.raises(ExportError, match="part 2 has another key-value metadata than part 1"):
        require_same(first, tagged, "part 2")
    require_same(first, tagged, "part 2", field_ids=(2,))  # row groups alone only need the schema


def test_splicer_moves_every_offset_and_renumbers_ordinals() -> None:
    tables = [rich_table(0, 2500), rich_table(2500, 1200)]
    files = [write_file(table, 1000, **INDEXED) for table in tables]
    # pyarrow writes no RowGroup.ordinal: add one, to see it renumbered.
    footers = []
    for i, data in enumerate(files):
        metadata = decode_exact(footer_bytes(data))
        for group in metadata.get(4).items:  # type: ignore[union-attr]
            group.fields.append(Field(7, I16, 0))
        files[i] = with_metadata(data, metadata)
        footers.append(read_footer(io.BytesIO(files[i]), f"part {i + 1}"))
    out = io.BytesIO()
    splicer = Splicer(out, footers[0], chunk_bytes=4096)  # several chunks a part
    for i, (data, footer) in enumerate(zip(files, footers, strict=True)):
        splicer.append(io.BytesIO(data), footer, f"part {i + 1}")
    splicer.finish()
    merged = out.getvalue()

    assert splicer.rows == 3700
    assert check_layout(merged) == sum(check_layout(data) for data in files)
    metadata = decode_exact(footer_bytes(merged))
    assert [g.get(7) for g in metadata.get(4).items] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert metadata.get(3) == 3700
    assert metadata.get(2) == decode_exact(footer_bytes(files[0])).get(2)
    assert pq.read_table(io.BytesIO(merged)).equals(pa.concat_tables(tables))
