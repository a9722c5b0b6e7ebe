"""The registry of export definitions: the shipped ones, and the team's own folders.

Shipped: one module per definition in ``export_tx.definitions``. The team's: every ``.py``,
``.yaml`` and ``.yml`` file in the folders named by ``EXPORT_TX_DEFINITIONS_PATH`` (separated
by ``:``). A file that cannot be loaded never takes the others down: it is left out and listed
by :func:`problems` (the DAG file ``export_definitions_check.py`` turns that list into an
import error in the Airflow UI, naming the file and the field).

Loading reads files only (no database, no network). It is cached per process and redone when a
file in the team's folders changes, so a long-running api-server sees new definitions too.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from dataclasses import dataclass
from pathlib import Path

from export_tx.catalog.files import SUFFIXES, load_file
from export_tx.definition import ExportDefinition
from export_tx.errors import DefinitionFileError


@dataclass(frozen=True)
class Loaded:
    definitions: dict[str, ExportDefinition]
    problems: tuple[DefinitionFileError, ...]


_lock = threading.Lock()
_cache: dict[str, tuple[tuple[tuple[str, int, int], ...], Loaded]] = {}


def _shipped() -> dict[str, ExportDefinition]:
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


def folders() -> list[Path]:
    from export_tx.config import get_settings

    return list(get_settings().definitions_path)


def team_files() -> list[Path]:
    """Every definition file in the team's folders, in a stable order."""
    files: list[Path] = []
    for folder in folders():
        if folder.is_dir():
            found = (p for p in folder.iterdir() if p.suffix in SUFFIXES and not p.name.startswith((".", "_")))
            files.extend(sorted(found))
    return files


def _fingerprint(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    marks = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        marks.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(marks)


def load() -> Loaded:
    """Every definition that loads, and every file that does not (cached until a file changes)."""
    files = team_files()
    key = "|".join(str(f) for f in folders())
    mark = _fingerprint(files)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and cached[0] == mark:
            return cached[1]
        found = _shipped()
        origin = {name: "the shipped definitions" for name in found}
        problems: list[DefinitionFileError] = []
        for path in files:
            try:
                definition = load_file(path)
            except DefinitionFileError as exc:
                problems.append(exc)
                continue
            except Exception as exc:  # whatever a file does, the others still load
                problems.append(DefinitionFileError(str(path), None, f"{type(exc).__name__}: {exc}"))
                continue
            if definition.name in found:
                taken = f"{definition.name!r} is already defined by {origin[definition.name]}"
                problems.append(DefinitionFileError(str(path), "name", taken))
                continue
            found[definition.name] = definition
            origin[definition.name] = str(path)
        loaded = Loaded(dict(sorted(found.items())), tuple(problems))
        _cache[key] = (mark, loaded)
        return loaded


def definitions() -> dict[str, ExportDefinition]:
    """Every registered definition by name (reads definition files only: no I/O beyond them)."""
    return load().definitions


def problems() -> tuple[DefinitionFileError, ...]:
    """The definition files that could not be loaded, each naming the file and the field."""
    return load().problems


def names() -> list[str]:
    return sorted(definitions())


def get(name: str) -> ExportDefinition:
    return definitions()[name]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
