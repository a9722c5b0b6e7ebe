"""Comparing an exported file with its source value by value: the file's columns as the Python
values psycopg reads (times as integers since 1970, so BC dates and years past 9999 compare too)."""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Any

import pyarrow as pa


def file_values(table: pa.Table, name: str) -> list[Any]:
    """The file's column as comparable Python values (times as integers, see SOURCE_SQL)."""
    column = table.column(name).combine_chunks()
    t = column.type
    if pa.types.is_date32(t):
        return column.view(pa.int32()).to_pylist()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return column.view(pa.int64()).to_pylist()
    if pa.types.is_list(t) and pa.types.is_timestamp(t.value_type):
        values = column.values.view(pa.int64())
        return pa.ListArray.from_arrays(column.offsets, values, mask=column.is_null()).to_pylist()
    if pa.types.is_struct(t):
        return [None if v is None else [v["months"], v["days"], v["microseconds"]] for v in column.to_pylist()]
    return column.to_pylist()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b) or (isinstance(a, Decimal) and isinstance(b, Decimal) and a == b)


def float32(value: Any) -> Any:
    """psycopg reads real as a Python float of its shortest text; the file holds the float32 itself."""
    if value is None:
        return None
    return struct.unpack("f", struct.pack("f", value))[0]
