"""The registry of export definitions: one module per definition in ``export_tx.definitions``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from export_tx.definition import ExportDefinition


@cache
def definitions() -> dict[str, ExportDefinition]:
    """Every registered definition by name (imports declarations only: no I/O)."""
    import export_tx.definitions as package

    found: dict[str, ExportDefinition] = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        definition = getattr(module, "DEFINITION", None)
        if not isinstance(definition, ExportDefinition):
            raise TypeError(f"{module.__name__} must set DEFINITION = ExportDefinition(...)")
        if definition.name in found:
            raise ValueError(f"definition {definition.name!r} is registered twice")
        found[definition.name] = definition
    return found


def names() -> list[str]:
    return sorted(definitions())


def get(name: str) -> ExportDefinition:
    return definitions()[name]
