"""Scheduled bulk exports, declared by data teams in a YAML file (``dags/bulk_exports.yaml``).

Each entry becomes a DAG ``bulk_export__<name>`` on its own schedule (catchup set explicitly).
Every run of it records a transaction header and triggers a normal ``export_transaction`` run
with that header's id as run id — so a scheduled export has its own token, log, progress and
notification, through exactly the code path of every other export.

    exports:
      - name: weekly_shipped          # DAG bulk_export__weekly_shipped
        definition: demo_orders
        params: {status: shipped}
        schedule: "0 6 * * 1"         # cron or preset
        start_date: 2026-01-05
        catchup: false                # missed intervals: run them (true) or only the latest (false)
        notify_email: ops@example.com # optional; several comma-separated
        notify_delay_minutes: 0
        retention_days: 30            # optional; default: the definition's
        batch_size: 250000            # optional
        owner: analyst                # who the transactions belong to (default bulk:<name>)
        paused: false                 # true: the DAG starts paused until someone unpauses it
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from export_tx.config import BULK_RUN_PREFIX
from export_tx.errors import BulkExportsInvalid, BulkRunIdTaken, RequestInvalid
from export_tx.request import ExportRequest, parse_request

ENTRY_FIELDS = {"name", "schedule", "start_date", "catchup", "owner", "description", "paused"}
_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class BulkExport:
    name: str
    request: ExportRequest
    schedule: str
    start_date: datetime
    catchup: bool
    owner: str
    description: str
    paused: bool = False

    @property
    def dag_id(self) -> str:
        return f"bulk_export__{self.name}"

    def tx_id(self, moment: datetime) -> str:
        """One transaction per interval: a retried run maps to the same header."""
        return f"{BULK_RUN_PREFIX}{self.name}__{moment:%Y%m%dT%H%M%S}"


def _entry(raw: Any, index: int) -> BulkExport:
    where = f"entry {index + 1}"
    if not isinstance(raw, dict):
        raise BulkExportsInvalid(f"{where}: must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BulkExportsInvalid(f"{where}: name must be lower-case letters, digits and _ (got {name!r})")
    where = f"bulk export {name!r}"
    for required in ("schedule", "start_date"):
        if raw.get(required) in (None, ""):
            raise BulkExportsInvalid(f"{where}: {required} is required")
    if not isinstance(raw.get("catchup"), bool):
        raise BulkExportsInvalid(f"{where}: catchup must be set explicitly to true or false")
    start = raw["start_date"]
    if isinstance(start, str):
        try:
            start = date.fromisoformat(start)
        except ValueError:
            raise BulkExportsInvalid(f"{where}: start_date {start!r} is not YYYY-MM-DD") from None
    if not isinstance(start, date):
        raise BulkExportsInvalid(f"{where}: start_date must be a date (YYYY-MM-DD)")
    conf = {k: v for k, v in raw.items() if k not in ENTRY_FIELDS}
    try:
        request = parse_request(conf)
    except RequestInvalid as exc:
        raise BulkExportsInvalid(f"{where}: {exc}") from None
    return BulkExport(
        name=name,
        request=request,
        schedule=str(raw["schedule"]),
        start_date=datetime(start.year, start.month, start.day),
        catchup=raw["catchup"],
        owner=str(raw.get("owner") or f"bulk:{name}"),
        description=str(raw.get("description") or f"Scheduled export of {request.definition}"),
        paused=bool(raw.get("paused", False)),
    )


def load(path: Path) -> list[BulkExport]:
    """Read and validate every entry; a bad entry is an error naming it (shown as a DAG import error)."""
    import yaml

    if not path.exists():
        return []
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("exports") or [] if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise BulkExportsInvalid(f"{path}: expected a top-level 'exports:' list")
    found = [_entry(raw, i) for i, raw in enumerate(entries)]
    names = [b.name for b in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BulkExportsInvalid(f"{path}: bulk export names must be unique: {', '.join(duplicates)}")
    return found


def request_export(entry: BulkExport, tx_id: str) -> str:
    """Record the header of this interval's transaction (idempotent); return its id."""
    from export_tx.config import DAG_ID
    from export_tx.store import HeaderStore

    store = HeaderStore.from_settings()
    header, created = store.create(tx_id, requested_by=entry.owner, dag_id=DAG_ID, **entry.request.as_conf())
    if created:
        store.add_event(tx_id, "info", f"scheduled by {entry.dag_id}")
    elif header.requested_by != entry.owner:
        # Someone started a run with this interval's id by hand (refused by the export DAG): say so
        # here, rather than skipping the export silently.
        raise BulkRunIdTaken(
            f"{entry.dag_id}: the run id {tx_id} was taken by a run {header.requested_by} started by hand; "
            "this interval's export did not run (ids starting with bulk__ are reserved)"
        )
    return header.id
