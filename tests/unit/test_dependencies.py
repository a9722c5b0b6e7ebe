"""Every library the shipped code imports is declared in pyproject.toml (not merely arriving
through Airflow), and nothing shipped imports the dev tooling."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "include" / "export_tx", REPO / "dags", REPO / "plugins"]


def _imported_roots() -> dict[str, str]:
    """Top-level module imported → one file that imports it."""
    found: dict[str, str] = {}
    for folder in SHIPPED:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _declared() -> set[str]:
    """The dependencies, and the opt-in extras a deployment installs for a feature (``mysql``,
    ``pandas``: imported only where that feature runs); never the ``dev`` extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [dep for name, deps in project["optional-dependencies"].items() if name != "dev" for dep in deps]
    return {
        re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        for dep in [*project["dependencies"], *extras]
    }


def test_every_third_party_import_is_declared() -> None:
    local = {"export_tx", "__future__"}
    distributions = packages_distributions()
    declared = _declared()
    missing = []
    for module, where in sorted(_imported_roots().items()):
        if module in local or module in sys.stdlib_module_names:
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert dists, f"{module} (imported by {where}) is not installed"
        if not dists & declared:
            missing.append(f"{module} ({' or '.join(sorted(dists))}; imported by {where})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_nothing_shipped_imports_the_dev_tooling() -> None:
    imports = _imported_roots()
    assert "devtools" not in imports, f"{imports.get('devtools')} imports devtools, which is not installed"
    assert "tests" not in imports and "bench" not in imports
