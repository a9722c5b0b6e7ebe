"""A definition's pandas transform: each batch through a DataFrame and back, every value exact, and
what comes back checked against the export's columns (a dropped, added, renamed or retyped
column is refused naming it; a rebuilt column converts back only where every value fits)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from export_tx.columns.conversions import batch_transform, pandas_transformed
from export_tx.definition import ExportDefinition
from export_tx.definitions.orders import mask_email
from export_tx.errors import BadDefinition, DataNotExportable, DefinitionInvalid
from export_tx.sources import SqliteSource

REPO = Path(__file__).resolve().parents[2]
D38 = pa.decimal128(38, 10)
D256 = pa.decimal256(76, 20)
STOCKHOLM = timezone(timedelta(hours=2))


def _definition(**transforms: Any) -> ExportDefinition:
    return ExportDefinition(name="t", description="", source=SqliteSource(), sql="SELECT 1 AS k", key_column="k",
                            **transforms)  # fmt: skip


def _every_type() -> pa.RecordBatch:
    """The values a pandas round trip is most likely to bend: extremes, NULLs, sub-second times."""
    columns = {
        "d38": pa.array(
            [Decimal("9999999999999999999999999999.9999999999"), Decimal("-0.0000000001"), None, Decimal("0E-10")], D38
        ),  # fmt: skip
        "d256": pa.array(
            [
                Decimal("9" * 56 + "." + "9" * 20),
                Decimal("-1." + "0" * 19 + "1"),
                None,
                Decimal("12345678901234567890.12345678901234567890"),
            ],
            D256,
        ),  # fmt: skip
        "i64": pa.array([2**63 - 1, None, -(2**63), 2**53 + 1], pa.int64()),
        "ts": pa.array(
            [
                datetime(1, 1, 1),
                datetime(2024, 2, 29, 23, 59, 59, 999_999),
                None,
                datetime(9999, 12, 31, 23, 59, 59, 1),
            ],
            pa.timestamp("us"),
        ),  # fmt: skip
        "ts_utc": pa.array(
            [
                datetime(1970, 1, 1, tzinfo=UTC),
                None,
                datetime(2262, 4, 12, 0, 0, 0, 1, tzinfo=UTC),
                datetime(1677, 9, 21, 0, 12, 43, 145_223, tzinfo=UTC),
            ],
            pa.timestamp("us", tz="UTC"),
        ),  # fmt: skip
        "ts_local": pa.array(
            [
                datetime(2024, 3, 31, 2, 30, 0, 500_001, tzinfo=STOCKHOLM),
                None,
                None,
                datetime(2000, 1, 1, tzinfo=STOCKHOLM),
            ],
            pa.timestamp("us", tz="Europe/Stockholm"),
        ),  # fmt: skip
        "day": pa.array([date(1, 1, 1), date(9999, 12, 31), None, date(1970, 1, 1)], pa.date32()),
        "raw": pa.array([b"\x00\xff\x00", b"", None, bytes(range(256))], pa.binary()),
        "text": pa.array(["ñandú 🦤", "e\u0301 (combining)", None, "\x01\u2028日本語\U0010ffff"], pa.string()),
    }
    return pa.RecordBatch.from_pydict(columns)


def test_an_identity_transform_gives_back_every_value_exactly() -> None:
    batch = _every_type()
    seen: list[pd.DataFrame] = []

    def identity(frame: pd.DataFrame) -> pd.DataFrame:
        seen.append(frame)
        return frame

    back = pandas_transformed(_definition(pandas_transform=identity), batch, batch.schema)
    assert all(isinstance(t, pd.ArrowDtype) for t in seen[0].dtypes), seen[0].dtypes
    assert back.schema.equals(batch.schema)
    for name in batch.schema.names:
        assert back.column(name).to_pylist() == batch.column(name).to_pylist(), name
        assert back.column(name).is_null().to_pylist() == batch.column(name).is_null().to_pylist(), name
    assert back.equals(batch)


def test_uppercasing_one_column_keeps_every_other_value() -> None:
    batch = _every_type()

    def upper(frame: pd.DataFrame) -> pd.DataFrame:
        frame["text"] = frame["text"].str.upper()
        return frame

    back = pandas_transformed(_definition(pandas_transform=upper), batch, batch.schema)
    assert back.column("text").to_pylist() == [
        None if v is None else v.upper() for v in batch.column("text").to_pylist()
    ]
    for name in batch.schema.names:
        if name != "text":
            assert back.column(name).equals(batch.column(name)), name


def test_a_filter_removes_rows_and_the_rest_stay_exact() -> None:
    batch = _every_type()

    def no_null_ints(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["i64"].notna()]

    back = pandas_transformed(_definition(pandas_transform=no_null_ints), batch, batch.schema)
    assert back.num_rows == 3
    assert back.equals(batch.take([0, 2, 3]))


def test_columns_in_another_order_and_rebuilt_from_python_objects_are_kept_exactly() -> None:
    batch = _every_type()

    def rebuilt(frame: pd.DataFrame) -> pd.DataFrame:
        frame["text"] = [None if v is pd.NA else f"<{v}>" for v in frame["text"]]  # pandas' own str dtype
        frame["d38"] = frame["d38"].map(lambda v: v, na_action="ignore").astype(object)  # Python Decimals
        return frame[list(reversed(frame.columns))]

    back = pandas_transformed(_definition(pandas_transform=rebuilt), batch, batch.schema)
    assert back.schema.equals(batch.schema)
    assert back.column("text").to_pylist() == [
        None if v is None else f"<{v}>" for v in batch.column("text").to_pylist()
    ]
    assert back.column("d38").equals(batch.column("d38"))


def _orders() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "order_id": pa.array([1, 2, 3], pa.int64()),
            "customer_email": pa.array(["ana.lopez@example.com", None, "b@x.org"]),
            "amount": pa.array([Decimal("10.50"), None, Decimal("-0.01")], pa.decimal128(12, 2)),
            "quantity": pa.array([1, None, 3], pa.int64()),
        }
    )


def _drop(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["amount"])


def _retype(frame: pd.DataFrame) -> pd.DataFrame:
    frame["amount"] = frame["amount"].astype(pd.ArrowDtype(pa.float64()))
    return frame


def _to_numpy_float(frame: pd.DataFrame) -> pd.DataFrame:
    frame["quantity"] = frame["quantity"].astype("float64")  # NULL becomes NaN: pandas' classic trap
    return frame


def _add(frame: pd.DataFrame) -> pd.DataFrame:
    frame["domain"] = frame["customer_email"].str.split("@").list[-1]
    return frame


def _rename(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"customer_email": "email"})


def _as_index(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("order_id")


def _twice(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame])


def _not_a_frame(frame: pd.DataFrame) -> Any:
    return frame["amount"]


@pytest.mark.parametrize(
    ("transform", "fragment"),
    [
        (_drop, "column 'amount' was dropped: return every column of the query"),
        (_retype, "column 'amount' was decimal128(12, 2) and came back as double: return the same type, "
                  "or declare the new type in columns"),
        (_to_numpy_float, "column 'quantity' was int64 and came back as double (pandas dtype float64): return "
                          "the same type"),
        (_add, "column 'domain' is not one of the export's columns: compute it in the SQL"),
        (_rename, "column 'customer_email' came back named 'email': keep the query's column names"),
        (_as_index, "column 'order_id' was dropped (it is the frame's index: call reset_index())"),
        (_twice, "returned 6 rows for a batch of 3: it may remove rows (a filter), never add them"),
        (_not_a_frame, "must return a pandas DataFrame; it returned Series"),
    ],
)  # fmt: skip
def test_a_result_that_is_not_the_exports_columns_is_refused_naming_the_column(
    transform: Callable[[pd.DataFrame], Any], fragment: str
) -> None:
    with pytest.raises(DefinitionInvalid) as info:
        pandas_transformed(_definition(pandas_transform=transform), _orders(), _orders().schema)
    assert [e.field for e in info.value.errors] == ["pandas_transform"]
    assert fragment in str(info.value), str(info.value)
    assert str(info.value).startswith("definition 't': pandas_transform: ")


def test_a_value_that_does_not_fit_its_type_is_refused_never_rounded() -> None:
    def more_places(frame: pd.DataFrame) -> pd.DataFrame:
        frame["amount"] = [Decimal("10.505"), None, Decimal("1.00")]
        return frame

    with pytest.raises(DataNotExportable) as info:
        pandas_transformed(_definition(pandas_transform=more_places), _orders(), _orders().schema)
    assert info.value.column == "amount" and "does not convert exactly to decimal128(12, 2)" in str(info.value)


def test_a_numpy_float_column_holding_nan_is_refused() -> None:
    batch = pa.RecordBatch.from_pydict({"x": pa.array([1.5, None, float("nan")], pa.float64())})

    def to_numpy(frame: pd.DataFrame) -> pd.DataFrame:
        frame["x"] = frame["x"].astype("float64")
        return frame

    with pytest.raises(DataNotExportable) as info:
        pandas_transformed(_definition(pandas_transform=to_numpy), batch, batch.schema)
    assert info.value.column == "x" and "cannot tell NULL from NaN" in str(info.value)


def test_an_error_in_the_transform_names_the_field() -> None:
    def broken(frame: pd.DataFrame) -> pd.DataFrame:
        return frame["no_such_column"]  # type: ignore[no-any-return]

    with pytest.raises(DefinitionInvalid, match=r"pandas_transform: failed on a batch \(KeyError"):
        pandas_transformed(_definition(pandas_transform=broken), _orders(), _orders().schema)


def test_the_arrow_transform_is_applied_as_it_is() -> None:
    assert batch_transform(_definition(transform=mask_email), _orders().schema) is mask_email
    assert batch_transform(_definition(), _orders().schema) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pandas_transform": "str.upper"}, "pandas_transform: must be a function DataFrame -> DataFrame (pandas)"),
        ({"pandas_transform": lambda f: f, "transform": mask_email},
         "pandas_transform: give either transform (Arrow) or pandas_transform, not both"),
    ],
)  # fmt: skip
def test_the_definition_checks_its_pandas_transform(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadDefinition) as info:
        _definition(**fields)
    assert str(info.value) == message and "str.upper" not in str(info.value)


def test_pandas_is_imported_only_when_a_pandas_transform_runs() -> None:
    """Definitions load at DAG-parse time: defining a pandas transform must not import pandas."""
    code = (
        "import sys\n"
        "from export_tx.catalog import registry\n"
        "from export_tx.definition import ExportDefinition\n"
        "from export_tx.sources import SqliteSource\n"
        "registry.names()\n"
        "ExportDefinition(name='t', description='', source=SqliteSource(), sql='SELECT 1 AS k', key_column='k',\n"
        "                 pandas_transform=lambda frame: frame)\n"
        "print('pandas' in sys.modules)\n"
    )
    env = {**os.environ, "EXPORT_TX_DEFINITIONS_PATH": str(REPO / "tests" / "definitions")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
