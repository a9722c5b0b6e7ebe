"""Request fields checked on their own: the optional ``label`` and ``format``, and a preview's batch size."""

from __future__ import annotations

import pytest

from export_tx import formats
from export_tx.errors import RequestInvalid
from export_tx.request import LABEL_MAX_CHARS, parse_batch_size, parse_request


def test_a_label_is_kept_trimmed() -> None:
    request = parse_request({"definition": "demo_orders", "label": "  Q3 orders for finance "})
    assert request.label == "Q3 orders for finance"
    assert request.as_conf()["label"] == "Q3 orders for finance"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_label_is_none(value: object) -> None:
    assert parse_request({"definition": "demo_orders", "label": value}).label is None


@pytest.mark.parametrize("value", ["x" * (LABEL_MAX_CHARS + 1), "two\nlines", 42, ["a"]])
def test_a_bad_label_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(RequestInvalid) as refused:
        parse_request({"definition": "demo_orders", "label": value})
    (error,) = refused.value.errors
    assert error.field == "label" and f"at most {LABEL_MAX_CHARS} characters" in error.message
    assert "xxxxxxxxxxxxxxxxxxxx" not in error.message  # the refused value is not echoed


@pytest.mark.parametrize(
    ("value", "size"), [("1000", 1000), ("250,000", 250_000), (" 5000000 ", 5_000_000), (2000, 2000)]
)
def test_a_batch_size_on_its_own_is_read_like_a_requests(value: object, size: int) -> None:
    assert parse_batch_size(value) == size


@pytest.mark.parametrize(("value", "message"), [
    ("10", "10 is out of range; allowed: 1,000 to 5,000,000"),
    ("lots", "must be an integer between 1,000 and 5,000,000"),
])  # fmt: skip
def test_a_bad_batch_size_on_its_own_gets_the_requests_message(value: object, message: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        parse_batch_size(value)
    assert [(e.field, e.message) for e in refused.value.errors] == [("batch_size", message)]
    with pytest.raises(RequestInvalid) as same:
        parse_request({"definition": "demo_orders", "batch_size": 10 if value == "10" else value})
    assert [e.message for e in same.value.errors] == [message]


def test_the_format_defaults_to_parquet() -> None:
    request = parse_request({"definition": "demo_orders"})
    assert request.format == "parquet" == formats.DEFAULT
    assert request.as_conf()["format"] == "parquet"
    assert parse_request({"definition": "demo_orders", "format": None}).format == "parquet"


@pytest.mark.parametrize("name", ["parquet", "csv", "csv.gz", "jsonl", "jsonl.gz"])
def test_each_format_is_accepted_and_kept(name: str) -> None:
    request = parse_request({"definition": "demo_orders", "format": name})
    assert request.format == name and request.as_conf()["format"] == name
    fmt = formats.get(name)
    assert fmt.name == name and fmt.suffix == ("." + name if name != "parquet" else ".parquet")


@pytest.mark.parametrize("value", ["xlsx", "parquet.gz", "CSV", "", "c" * 5000, 3, ["csv"], {"name": "csv"}])
def test_a_bad_format_is_refused_naming_the_field_and_the_allowed_values(value: object) -> None:
    with pytest.raises(RequestInvalid) as refused:
        parse_request({"definition": "demo_orders", "format": value})
    (error,) = refused.value.errors
    assert error.field == "format"
    assert error.message.endswith("allowed: parquet, csv, csv.gz, jsonl, jsonl.gz")
    assert "ccccccccccccccc" not in error.message  # at most a few characters of the refused value
    assert len(error.message) < 120
