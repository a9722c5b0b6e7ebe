"""Definition and request validation: every bad field is named with what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from export_tx.catalog import registry
from export_tx.errors import RequestInvalid
from export_tx.request import parse_request


def test_registry_has_the_shipped_definitions() -> None:
    # Whatever definitions a team adds (the tests add their own folder), the shipped ones are there.
    assert {"demo_orders", "orders"} <= set(registry.names())
    orders = registry.get("orders")
    assert orders.transform is not None
    assert orders.params_schema()["additionalProperties"] is False


@pytest.mark.parametrize(
    ("conf", "field", "fragment"),
    [
        ({"definition": "nope"}, "definition", "not a registered definition; allowed: "),
        ({}, "definition", "missing is not a registered definition"),
        ({"definition": "demo_orders", "params": {"stauts": "paid"}}, "params.stauts", "allowed: since, status, until"),
        ({"definition": "demo_orders", "params": {"status": "lost"}}, "params.status", "allowed: pending, paid"),
        ({"definition": "demo_orders", "params": {"since": "2025-13-45"}}, "params.since", "YYYY-MM-DD"),
        ({"definition": "demo_orders", "params": {"since": 20250101}}, "params.since", "20250101 is not a date"),
        ({"definition": "demo_orders", "params": ["x"]}, "params", "must be an object"),
        ({"definition": "demo_orders", "batch_size": 10}, "batch_size", "allowed: 1,000 to 5,000,000"),
        ({"definition": "demo_orders", "batch_size": "big"}, "batch_size", "integer between 1,000 and 5,000,000"),
        ({"definition": "demo_orders", "batch_size": 6_000_000}, "batch_size", "6,000,000 is out of range"),
        ({"definition": "demo_orders", "notify_email": "not-an-address"}, "notify_email", "not an email"),
        ({"definition": "demo_orders", "notify_delay_minutes": -1}, "notify_delay_minutes", "out of range"),
        ({"definition": "demo_orders", "batchsize": 5000}, "batchsize", "unknown field"),
        ({"definition": "demo_orders", "format": "xlsx"}, "format", "'xlsx' is not a file format; allowed: parquet, "),
        ({"definition": "demo_orders", "format": "parquet.gz"}, "format", "allowed: parquet, csv, csv.gz, jsonl, "),
    ],
)
def test_bad_requests_name_the_field(conf: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request(conf)
    matching = [e for e in info.value.errors if e.field == field]
    assert matching, info.value.errors
    assert fragment in matching[0].message
    assert field in str(info.value)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request({"definition": "demo_orders", "params": {"x": 1, "status": "lost"}, "batch_size": 1})
    assert {e.field for e in info.value.errors} == {"params.x", "params.status", "batch_size"}


@pytest.mark.parametrize(
    ("conf", "expected_params"),
    [
        ({"definition": "demo_orders"}, {}),
        ({"definition": "demo_orders", "params": None}, {}),
        (
            {"definition": "demo_orders", "params": {"status": "paid", "since": "2025-02-01"}},
            {"status": "paid", "since": "2025-02-01"},
        ),
        ({"definition": "orders", "params": {"until": "2026-01-31"}}, {"until": "2026-01-31"}),
    ],
)
def test_valid_requests(conf: dict[str, Any], expected_params: dict[str, Any]) -> None:
    request = parse_request({**conf, "batch_size": 5000, "notify_email": "ana@example.com"})
    assert request.params == expected_params
    assert request.batch_size == 5000
    assert request.notify_email == "ana@example.com"
    # The conf a request produces is itself a valid request (the API re-sends it to Airflow).
    assert parse_request(request.as_conf()) == request


def test_unset_params_bind_null() -> None:
    definition = registry.get("demo_orders")
    assert definition.bind_values({"status": "paid"}) == {"since": None, "until": None, "status": "paid"}


def test_several_recipients_and_a_retention() -> None:
    request = parse_request({"definition": "orders", "notify_email": "a@x.io,  b@y.io", "retention_days": 30})
    assert request.notify_email == "a@x.io, b@y.io" and request.retention_days == 30
    with pytest.raises(RequestInvalid, match="notify_email: 'b@' is not an email address"):
        parse_request({"definition": "orders", "notify_email": "a@x.io,b@"})
    with pytest.raises(RequestInvalid, match="retention_days: 0 is out of range; allowed: 1 to 90"):
        parse_request({"definition": "orders", "retention_days": 0})
    # Never beyond the definition's maximum (published by /definitions as retention_days_max).
    with pytest.raises(RequestInvalid, match="retention_days: 3,650 is out of range; allowed: 1 to 90"):
        parse_request({"definition": "orders", "retention_days": 3650})


def test_the_fingerprint_is_what_the_export_holds() -> None:
    from export_tx.request import fingerprint

    base = fingerprint("orders", {"status": "paid", "since": "2026-01-01"}, "parquet")
    assert fingerprint("orders", {"since": "2026-01-01", "status": "paid", "until": None}, None) == base
    assert fingerprint("orders", {"status": "paid", "since": "2026-01-02"}, "parquet") != base
    assert fingerprint("orders", {"status": "paid", "since": "2026-01-01"}, "csv") != base
    assert fingerprint("customers", {"status": "paid", "since": "2026-01-01"}, "parquet") != base
    assert fingerprint("orders", {"n": 1}, "parquet") != fingerprint("orders", {"n": "1"}, "parquet")
