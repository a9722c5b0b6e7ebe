"""Whatever definitions a team adds, the project's tests hold them: every registered definition —
shipped, and from ``EXPORT_TX_DEFINITIONS_PATH`` — is checked as written, and planned against its
source (described, typed, counted) wherever that source is reachable from the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from export_tx.catalog import registry
from export_tx.definition import ExportDefinition
from export_tx.planning import plan_export
from export_tx.sources import DbApiSource, PostgresSource
from export_tx.states import State
from tests.helpers import demo_source_rows, local_path, read_result, run_export, store

NAMES = registry.names()
#: The definitions this repository ships and keeps in tests/definitions: all must be planned here.
OURS = {"demo_orders", "orders", "demo_by_country", "legacy_demo_orders", "type_matrix"}


@pytest.mark.parametrize("name", NAMES)
def test_every_definition_is_published_as_written(name: str) -> None:
    """What /definitions publishes for it is JSON, and its overrides (an older ``schema=`` function
    runs here) name types: a mistake a definition's constructor cannot see fails here."""
    definition = registry.get(name)
    published = json.loads(json.dumps(definition.describe()))
    assert published["params_schema"]["additionalProperties"] is False
    assert set(published["params_schema"]["properties"]) == set(definition.params)
    assert set(published["column_types"]) == set(definition.overrides())


def _reachable(definition: ExportDefinition) -> bool:
    if isinstance(definition.source, PostgresSource | DbApiSource):  # an Airflow connection
        return f"AIRFLOW_CONN_{definition.source.conn_id.upper()}" in os.environ
    return Path(definition.source.uri()).exists()


@pytest.mark.usefixtures("demo_db", "type_matrix")
def test_every_definition_plans_against_its_source() -> None:
    """Described, typed and counted with its parameters unset: a bad SQL, a missing column or a
    lossy override fails here, in the team's CI, before any user runs it."""
    planned = []
    for name in NAMES:
        definition = registry.get(name)
        if not _reachable(definition):
            continue  # a team's source this machine cannot reach: checked as written above
        plan = plan_export(definition, {}, 250_000, 200)
        assert [c.name for c in plan.schema.columns] == [f.name for f in plan.schema.source_schema()]
        planned.append(name)
    assert OURS <= set(planned), f"not planned: {OURS - set(planned)}"


@pytest.mark.usefixtures("airflow_db", "demo_db")
def test_an_unchanged_old_style_definition_and_a_yaml_one_export(demo_db: Path) -> None:
    """``legacy_demo_orders`` is the demo definition file as an earlier version shipped it (a whole
    ``schema=``); ``demo_by_country`` a team's YAML with one override. Both export exactly."""
    run = run_export({"definition": "legacy_demo_orders", "params": {"status": "returned"}, "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "success" and header.state == State.SUCCEEDED, header.error
    assert read_result(header.result_uri or "") == demo_source_rows(demo_db, "status = ?", ("returned",))

    run = run_export({"definition": "demo_by_country", "params": {"country": "SE"}, "batch_size": 1000})
    header = store().get(run.run_id)
    assert run.state == "success", header.error
    table = pq.read_table(local_path(header.result_uri or ""))
    assert [str(t) for t in table.schema.types] == ["int64", "decimal128(20, 0)", "double", "string", "timestamp[us]"]
    source = [(r[0], r[1], r[4], r[8], r[9]) for r in demo_source_rows(demo_db, "country = ?", ("SE",))]
    assert [tuple(r.values()) for r in table.to_pylist()] == [(a, b, c, d, e) for a, b, c, d, e in source]
