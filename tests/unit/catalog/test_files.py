"""Definitions in the team's own folders: YAML and Python, each mistake named by file and field,
never taking the other definitions down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from export_tx.catalog import registry
from export_tx.catalog.files import load_file
from export_tx.errors import DefinitionFileError
from export_tx.sources import DbApiSource, SqliteSource

REPO = Path(__file__).resolve().parents[3]

GOOD_YAML = """
name: invoices
description: Invoices by issue date.
connection: billing_pg
sql: |
  SELECT invoice_id, total, issued_at FROM invoices
  WHERE (CAST(:since AS date) IS NULL OR issued_at >= CAST(:since AS date))
key_column: invoice_id
params:
  since: {type: string, format: date, title: Issued on or after}
required: [since]
max_rows: 1000
retention_days: 3
columns:
  total: decimal(18, 2)
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_yaml_definition(tmp_path: Path) -> None:
    definition = load_file(_write(tmp_path, "invoices.yaml", GOOD_YAML))
    # The connection's type is read when the export runs, never when a definition loads (DAG parse).
    assert definition.name == "invoices" and definition.source == DbApiSource("billing_pg")
    assert definition.required == ("since",) and definition.max_rows == 1000 and definition.retention_days == 3
    assert definition.describe()["column_types"] == {"total": "decimal128(18, 2)"}
    assert definition.origin == str(tmp_path / "invoices.yaml")
    sqlite = load_file(_write(tmp_path, "demo.yml", "sqlite:\nsql: SELECT 1 AS k\nkey_column: k\n"))
    assert sqlite.name == "demo" and sqlite.source == SqliteSource(None)  # the embedded demo database


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        (GOOD_YAML.replace("key_column:", "key_colum:"), "key_colum", "unknown field; allowed: name, description"),
        (GOOD_YAML.replace("key_column: invoice_id", ""), "key_column", "is required"),
        (GOOD_YAML.replace("decimal(18, 2)", "money"), "columns.total", "'money' is not a known column type"),
        (GOOD_YAML.replace("key_column: invoice_id", "key_column: [invoice_id"), None, "not valid YAML at line"),
        (GOOD_YAML.replace("type: string,", "type: strng,"), "params.since", "not a valid JSON schema"),
        (GOOD_YAML.replace(":since AS date) IS NULL", ":sinse AS date) IS NULL"), "sql",
         "placeholder :sinse is not a declared parameter"),
        (GOOD_YAML + "sqlite: /tmp/x.db\n", "connection", "name exactly one source"),
        (GOOD_YAML.replace("name: invoices", "name: 9lives"), "name", "must start with a letter"),
        (GOOD_YAML.replace("max_rows: 1000", "max_rows: lots"), "max_rows", "must be a whole number"),
        (GOOD_YAML.replace("required: [since]", "required: [until]"), "required", "'until' is not a declared"),
        ("- just\n- a list\n", None, "must be a mapping of fields"),
    ],
)  # fmt: skip
def test_yaml_mistakes_name_the_file_and_the_field(tmp_path: Path, text: str, field: str | None,
                                                   fragment: str) -> None:  # fmt: skip
    path = _write(tmp_path, "invoices.yaml", text)
    with pytest.raises(DefinitionFileError) as info:
        load_file(path)
    assert info.value.path == str(path) and info.value.field == field
    assert fragment in str(info.value) and str(info.value).startswith(str(path))


def test_python_mistakes_name_the_file_the_line_or_the_field(tmp_path: Path) -> None:
    broken = _write(tmp_path, "broken.py", "from export_tx.definition import ExportDefinition\n\nDEFINITION = nope\n")
    with pytest.raises(DefinitionFileError, match=r"broken.py: NameError at line 3: name 'nope' is not defined"):
        load_file(broken)
    bad_key = _write(tmp_path, "bad_key.py", """
        from export_tx.definition import ExportDefinition
        from export_tx.sources import SqliteSource
        DEFINITION = ExportDefinition(name="bad_key", description="", source=SqliteSource(),
                                      sql="SELECT 1 AS k", key_column="k; DROP TABLE x")
    """)  # fmt: skip
    with pytest.raises(DefinitionFileError) as info:
        load_file(bad_key)
    assert info.value.field == "key_column" and "plain column name" in str(info.value)
    unset = _write(tmp_path, "unset.py", "X = 1\n")
    with pytest.raises(DefinitionFileError, match="DEFINITION: must be set to ExportDefinition"):
        load_file(unset)


@pytest.fixture
def team_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "team"
    folder.mkdir()
    monkeypatch.setenv("EXPORT_TX_DEFINITIONS_PATH", f"{folder}{os.pathsep}{tmp_path / 'missing'}")
    registry.clear_cache()
    yield folder
    registry.clear_cache()


def test_a_bad_file_never_takes_the_others_down(team_folder: Path) -> None:
    _write(team_folder, "invoices.yaml", GOOD_YAML)
    _write(team_folder, "broken.yaml", GOOD_YAML.replace("name: invoices", "name: broken").replace("sql:", "sq:"))
    _write(team_folder, "clash.yml", GOOD_YAML.replace("name: invoices", "name: orders"))
    _write(team_folder, "notes.txt", "not a definition")
    names = registry.names()
    assert {"demo_orders", "orders", "invoices"} <= set(names) and "broken" not in names
    assert registry.get("orders").origin is None  # the shipped one, not the clash
    problems = {Path(p.path).name: (p.field, str(p)) for p in registry.problems()}
    assert set(problems) == {"broken.yaml", "clash.yml"}
    assert problems["broken.yaml"][0] == "sq"
    assert problems["clash.yml"] == ("name", f"{team_folder / 'clash.yml'}: name: 'orders' is already defined "
                                             "by the shipped definitions")  # fmt: skip


def test_new_and_changed_files_are_seen_without_a_restart(team_folder: Path) -> None:
    assert "invoices" not in registry.names()
    path = _write(team_folder, "invoices.yaml", GOOD_YAML)
    assert "invoices" in registry.names()
    path.write_text(GOOD_YAML.replace("retention_days: 3", "retention_days: 5"))
    os.utime(path, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    assert registry.get("invoices").retention_days == 5


def test_bad_files_are_an_import_error_in_airflow_and_the_export_dag_still_loads(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    folder.mkdir()
    _write(folder, "invoices.yaml", GOOD_YAML)
    _write(folder, "broken.yaml", GOOD_YAML.replace("name: invoices", "name: broken").replace("key_column", "key"))
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r});"
        "print(repr(bag.import_errors));"
        "print(bag.dags['export_transaction'].params.get_param('definition').schema['enum'])"
    )
    env = {**os.environ, "EXPORT_TX_DEFINITIONS_PATH": str(folder)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    errors, enum = result.stdout.strip().splitlines()[-2:]
    assert "export_definitions_check.py" in errors
    assert f"{folder / 'broken.yaml'}: key: unknown field; allowed:" in errors
    assert "'invoices'" in enum and "'broken'" not in enum and "'demo_orders'" in enum
