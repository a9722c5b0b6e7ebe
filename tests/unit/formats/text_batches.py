"""A record batch of every type the text formats write, with the values that are easy to get
wrong (quotes, line breaks, unicode, NULLs, tiny and huge decimals, timestamps, bytes)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pyarrow as pa

INTERVAL = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("microseconds", pa.int64())])
SCHEMA = pa.schema([
    ("id", pa.int64()), ("text", pa.string()), ("amount", pa.decimal128(38, 10)), ("big", pa.decimal256(50, 5)),
    ("ts", pa.timestamp("us")), ("tstz", pa.timestamp("us", tz="UTC")), ("day", pa.date32()),
    ("at", pa.time64("us")), ("raw", pa.binary()), ("u", pa.uuid()), ("j", pa.json_()),
    ("amounts", pa.list_(pa.decimal128(8, 2))), ("iv", INTERVAL), ("f8", pa.float64()), ("ok", pa.bool_()),
])  # fmt: skip

ROWS = [
    [1, 'he said "hi",\nthen left\r\n', Decimal("1234567890123456789012345678.0123456789"),
     Decimal("123456789012345678901234567890123456789012345.00001"), datetime(2024, 1, 2, 3, 4, 5, 6),
     datetime(2024, 1, 2, tzinfo=UTC), date(2024, 2, 29), time(1, 2, 3, 4), b"\x00\xff\n\"", uuid.UUID(int=5),
     '{"a": [1,\n 2.50000000000000000001]}', [Decimal("1.50"), None], {"months": 1, "days": 2, "microseconds": 3},
     0.1, True],
    [2, None, None, None, None, None, None, None, None, None, None, None, None, None, None],
    [3, "", Decimal("-0.0000000001"), Decimal("0.00000"), datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999,
     tzinfo=UTC), date(1, 1, 1), time(23, 59, 59, 999999), b"", uuid.UUID(int=2**128 - 1), "null", [],
     {"months": -1, "days": 0, "microseconds": -5}, -1.5e-300, False],
    [4, "ünïcødé ✓ 日本語 🎉 , ; \t", Decimal("-99.0000000000"), Decimal("-1.00000"), datetime(2000, 2, 29, 12),
     datetime(1970, 1, 1, tzinfo=UTC), date(1970, 1, 1), time(0, 0), bytes(range(256)), uuid.UUID(int=0),
     '"x"', [None], {"months": 0, "days": 0, "microseconds": 0}, float("inf"), None],
]  # fmt: skip


def batch(rows: list[list[object]] | None = None) -> pa.RecordBatch:
    rows = ROWS if rows is None else rows
    arrays = []
    for index, field in enumerate(SCHEMA):
        values = [r[index] for r in rows]
        if field.name == "u":
            arrays.append(pa.ExtensionArray.from_storage(
                pa.uuid(), pa.array([None if v is None else v.bytes for v in values], pa.binary(16))))  # fmt: skip
        elif field.name == "j":
            arrays.append(pa.ExtensionArray.from_storage(pa.json_(), pa.array(values, pa.string())))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def many(rows: int, start: int = 0) -> pa.RecordBatch:
    """``rows`` rows of the four above, ids from ``start``."""
    return batch([[start + i, *ROWS[i % len(ROWS)][1:]] for i in range(rows)])
