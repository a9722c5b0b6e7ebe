"""Shared test helpers: run the DAG in-process and read results back independently."""

from __future__ import annotations

import copy
import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from export_tx.store import HeaderStore

DEMO_COLUMNS = (
    "order_id, customer_id, customer_email, status, amount, currency, quantity, product_sku, country, "
    "created_at, updated_at, note"
)


@cache
def export_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["export_transaction"]
    _DEFAULTS.update(copy.deepcopy(dag.params.dump()))
    return dag


_DEFAULTS: dict[str, Any] = {}


def run_export(conf: dict[str, Any]) -> Any:
    """One whole run with ``dag.test(logical_date=None)``, as UI and REST runs have no logical date.

    Every Param is given (its default unless ``conf`` says otherwise): ``dag.test`` keeps the last
    run's conf in the DAG's Params, which would leak into the next run of the session.
    """
    dag = export_dag()
    return dag.test(logical_date=None, run_conf={**copy.deepcopy(_DEFAULTS), **conf})


def local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def read_result(uri: str) -> list[tuple[Any, ...]]:
    table = pq.read_table(local_path(uri))
    return [tuple(row.values()) for row in table.to_pylist()]


def demo_source_rows(db: Path, where: str = "1 = 1", args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The demo rows straight from SQLite (stdlib driver, not the product's ADBC path)."""
    from datetime import datetime

    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {DEMO_COLUMNS} FROM demo_orders WHERE {where} ORDER BY order_id", args).fetchall()
    out = []
    for r in rows:
        r = list(r)
        r[9] = datetime.fromisoformat(r[9])
        r[10] = datetime.fromisoformat(r[10])
        out.append(tuple(r))
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store() -> HeaderStore:
    return HeaderStore.from_settings()


class FakeUser:
    """The user an app test authenticates as (Airflow's user: a name and a role)."""

    def __init__(self, name: str, role: str) -> None:
        self.name, self.role = name, role

    def get_name(self) -> str:
        return self.name


def assert_only_finished_parts(tx_id: str) -> None:
    """A FAILED transaction keeps exactly its finished batches' parts (POST …/retry re-runs the
    others): no result, no temporary file, no part of an unfinished batch."""
    from export_tx import formats, storage

    s = store()
    header = s.get(tx_id)
    root = storage.tx_root(tx_id)
    found = sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    fmt = formats.get(header.format)
    expected = sorted(str(storage.part_path(tx_id, b.batch_no, fmt.suffix)) for b in s.plan(tx_id) if b.state == "DONE")
    assert found == expected, f"left in storage: {found}; the finished batches' parts: {expected}"


@contextmanager
def signed_in(store: Any, who: dict[str, Any]) -> Iterator[Any]:
    """The ``/exports`` app with Airflow's authentication replaced by ``who["user"]`` (read at each
    request: a test may switch users) and its header store by ``store``; undone afterwards."""
    from airflow.api_fastapi.core_api.security import get_user

    from export_tx.api import app as api

    app = api.app
    for dep in (api.CanRead, api.CanRequest, api.CanCancel):
        app.dependency_overrides[dep.dependency] = lambda: None
    app.dependency_overrides[get_user] = lambda: who["user"]
    app.dependency_overrides[api.get_store] = lambda: store
    try:
        yield app
    finally:
        app.dependency_overrides.clear()


def maps_library(pid: int, fragment: str) -> bool:
    """Whether process ``pid`` has a shared library whose path contains ``fragment`` mapped
    (``/proc/<pid>/maps``): what it has imported, seen from outside."""
    with open(f"/proc/{pid}/maps") as maps:
        return any(fragment in line for line in maps)
