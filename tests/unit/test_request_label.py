"""The optional ``label`` of a request: the requester's own one-line name for an export."""

from __future__ import annotations

import pytest

from export_tx.errors import RequestInvalid
from export_tx.request import LABEL_MAX_CHARS, parse_request


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
