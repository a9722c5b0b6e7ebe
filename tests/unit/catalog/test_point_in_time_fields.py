"""``consistent_snapshot`` as a definition field: PostgreSQL only, a boolean, refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from export_tx.catalog.files import definition_from_mapping
from export_tx.definition import ExportDefinition
from export_tx.errors import BadDefinition, DefinitionFileError
from export_tx.sources import DbApiSource, PostgresSource, SqliteSource

BASE: dict[str, Any] = {"name": "accounts", "sql": "SELECT id FROM accounts", "key_column": "id"}


def test_postgresql_and_connections_may_ask_for_a_snapshot_sqlite_may_not() -> None:
    on_pg = ExportDefinition(description="", source=PostgresSource("pg"), consistent_snapshot=True, **BASE)
    assert on_pg.consistent_snapshot and on_pg.describe()["consistent_snapshot"] is True
    # An Airflow connection's type is looked up when the export runs, never when definitions load.
    assert ExportDefinition(description="", source=DbApiSource("any"), consistent_snapshot=True, **BASE)
    assert (
        ExportDefinition(description="", source=SqliteSource(None), **BASE).describe()["consistent_snapshot"] is False
    )
    with pytest.raises(BadDefinition) as refused:
        ExportDefinition(description="", source=SqliteSource(None), consistent_snapshot=True, **BASE)
    assert [e.field for e in refused.value.errors] == ["consistent_snapshot"]
    assert "the embedded demo database is not PostgreSQL" in str(refused.value)
    with pytest.raises(BadDefinition, match="consistent_snapshot: must be true or false"):
        ExportDefinition(description="", source=PostgresSource("pg"), consistent_snapshot="yes", **BASE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sqlite": None, "consistent_snapshot": True}, "a point-in-time export reads one PostgreSQL snapshot"),
        ({"connection": "billing_pg", "consistent_snapshot": "yes"}, "must be true or false"),
        ({"connection": "billing_pg", "consistent_snapshot": 1}, "must be true or false"),
    ],
)
def test_a_yaml_definition_is_refused_naming_the_field(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionFileError) as refused:
        definition_from_mapping({**BASE, **extra}, "accounts.yaml")
    assert refused.value.field == "consistent_snapshot" and message in str(refused.value)


def test_a_yaml_definition_asks_for_a_snapshot() -> None:
    definition = definition_from_mapping({**BASE, "connection": "billing_pg", "consistent_snapshot": True}, "a.yaml")
    assert definition.consistent_snapshot is True
    assert definition_from_mapping({**BASE, "connection": "billing_pg"}, "a.yaml").consistent_snapshot is False
