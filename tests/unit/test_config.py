"""The settings are reused while the environment they come from is unchanged, and resolved again
the moment a variable they read changes (tests, and a deployment's restart with new values)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest

from export_tx import config


def test_settings_are_reused_until_a_variable_they_read_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("EXPORT_TX_STORE_URL", raising=False)
    first = config.get_settings()
    assert config.get_settings() is first
    assert first.store_url == f"sqlite:///{tmp_path / 'export_tx.db'}"
    monkeypatch.setenv("EXPORT_TX_STORE_URL", "sqlite:////elsewhere.db")
    assert config.get_settings().store_url == "sqlite:////elsewhere.db"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "other"))
    monkeypatch.delenv("EXPORT_TX_STORE_URL")
    assert config.get_settings().store_url == f"sqlite:///{tmp_path / 'other' / 'export_tx.db'}"
    monkeypatch.setenv("EXPORT_TX_PUBLIC_URL", "https://exports.example.com/")
    assert config.get_settings().public_base_url == "https://exports.example.com"


def test_every_variable_the_settings_read_is_one_they_are_reused_by() -> None:
    """A variable read by Settings.from_env but missing from SETTINGS_VARIABLES would be ignored
    while the settings are reused."""
    trees = [
        ast.parse(textwrap.dedent(inspect.getsource(fn))) for fn in (config.Settings.from_env, config.airflow_home)
    ]
    read = {
        node.args[0].value
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_env"
        and isinstance(node.args[0], ast.Constant)
    }  # fmt: skip
    assert read and read <= set(config.SETTINGS_VARIABLES)
