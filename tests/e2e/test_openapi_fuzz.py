"""Generated requests against the real stack's ``/exports`` API, from its own OpenAPI description
(schemathesis): valid and invalid bodies, query and path parameters for every operation. No
answer is a 5xx; every refusal is JSON with a ``detail``, and a 400/413/422 names the field it
refuses; no answer echoes a large value back; every answer is one the description documents.

The generated requests come from ``bob`` (an analyst the other end-to-end tests only use as
"someone else"); whatever export they start is cancelled afterwards so the shared stack stays
quiet. Derandomized: the same cases every run (``EXPORT_TX_FUZZ_EXAMPLES`` for more)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devtools.stack import AirflowStack
from tests.e2e.conftest import terminal, tx_url

pytestmark = pytest.mark.stack

EXAMPLES = int(os.environ.get("EXPORT_TX_FUZZ_EXAMPLES", "25"))
#: No refusal answers more than this: values quoted in errors are cut short.
REFUSAL_BYTES_MAX = 8 * 1024
FIELD_REFUSALS = {400, 413, 422}


@pytest.fixture(scope="module")
def bob(stack: AirflowStack) -> Iterator[httpx.Client]:
    with stack.client("bob") as client:
        before = {t["id"] for t in _transactions(client)}
        yield client
        for t in _transactions(client):  # what the generated requests started
            if t["id"] not in before and not terminal(t):
                client.post(f"{tx_url(t['id'])}/cancel")


def _transactions(client: httpx.Client) -> list[dict[str, Any]]:
    answer = client.get("/exports/v1/transactions", params={"limit": 100})
    answer.raise_for_status()
    return list(answer.json()["transactions"])


@pytest.fixture(scope="module")
def api_schema(bob: httpx.Client) -> Any:
    raw = bob.get("/exports/openapi.json")
    raw.raise_for_status()
    return schemathesis.openapi.from_dict(raw.json())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_generated_requests_get_documented_answers_never_a_5xx(
    api_schema: Any, bob: httpx.Client, stack: AirflowStack, mode: GenerationMode
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    for operation in operations:

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy(generation_mode=mode))
        def answers_well(case: Any) -> None:
            check_answer(case, bob, stack)

        answers_well()


def check_answer(case: Any, bob: httpx.Client, stack: AirflowStack) -> None:
    auth = {"Authorization": bob.headers["Authorization"]}
    response = case.call(base_url=f"{stack.base_url}/exports", headers=auth, timeout=75)
    # No 5xx; status, headers and body as documented; refused without (or with forged) credentials.
    # Not "valid data is accepted": which definitions exist and what each takes as parameters are
    # known at run time only (GET /v1/definitions), so a schema-valid request may rightly be a 422.
    case.validate_response(response, headers=auth, excluded_checks=[positive_data_acceptance],
                           transport_kwargs={"base_url": f"{stack.base_url}/exports"})  # fmt: skip
    if response.status_code < 400:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), response.text[:200]
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert len(response.content) <= REFUSAL_BYTES_MAX, f"{len(response.content)} bytes"
    if response.status_code in FIELD_REFUSALS:
        errors = body.get("errors")
        assert errors, body
        assert all(isinstance(e.get("field"), str) and e["field"] for e in errors), body
