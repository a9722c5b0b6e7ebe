"""
### export_definitions_check — definition files that cannot be loaded, shown as import errors

Not a DAG: this Airflow DAG file only loads the export definitions (the shipped ones and those in
the folders named by `EXPORT_TX_DEFINITIONS_PATH`). A definition file with a mistake is left out
of `export_transaction` — the others keep working — and listed here, so the Airflow UI shows it as
an import error of this file naming the definition file and the field.
"""

from __future__ import annotations

from export_tx.catalog import registry
from export_tx.errors import DefinitionFileError

_problems = registry.problems()
if _problems:
    lines = "\n".join(f"  - {problem}" for problem in _problems)
    raise DefinitionFileError(
        "definition files", None, f"{len(_problems)} could not be loaded and are not offered:\n{lines}"
    )
