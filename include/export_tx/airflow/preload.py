"""Import what export tasks import once, in the process that forks Airflow's task processes.

Every Airflow task runs in a process forked from its executor's worker: with LocalExecutor a
worker the scheduler forked at its start, with Celery a pool process of the worker. A task has
for free whatever that parent had imported; anything else it imports itself, every time. For an
export that is pyarrow, the source drivers, the storage client and this library: measured in the
tasks' own import logs, about 0.3 s of each planning and batch task's start-up and 0.04 s of every
other task's (a one-batch export's six tasks: 1.78 s of task time → 1.0 s with the preload, on 2
cores). Airflow's Celery worker preloads its own heavy modules for the same reason
(``on_celery_import_modules``).

Called from ``airflow_local_settings.py`` (``config/`` of this repository; Airflow imports it in
each of its processes at start), it imports only in the processes that fork tasks, and only
modules: nothing connects, reads a definition or starts a thread of ours (pyarrow starts its
allocator's, which it keeps safe across ``fork``). Which processes (``EXPORT_TX_PRELOAD``):

* ``auto`` (the default): a Celery worker — its machine's cores are there to run tasks.
* ``on``: a scheduler running LocalExecutor too. Not the default: on one 2-core machine shared
  with the api-server, 50 ``POST``s at once were answered slower with it (interleaved runs of
  the benchmark's API load: server side p50 147–156 ms against 93–118 ms, p99 at the clients
  364–381 ms against 231–250 ms), although the api-server preloads nothing; the cause is not
  pinned down.
* ``off``: none.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: What export tasks import, in the order a task would: the DAG files' decorators and operators,
#: then what planning, batches, the merge and the notifications import when they run. Missing
#: optional parts (an image without the Amazon provider) are skipped.
TASK_MODULES = (
    "airflow.sdk.bases.decorator",
    "airflow.sdk.definitions.decorators",
    "airflow.sdk.definitions.decorators.setup_teardown",
    "export_tx.airflow.operators",
    "export_tx.airflow.params",
    "export_tx.airflow.context",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.parquet",
    "pyarrow.csv",
    "psycopg",
    "adbc_driver_manager",
    "adbc_driver_postgresql",
    "adbc_driver_sqlite",
    "airflow.providers.amazon.aws.hooks.s3",
    "export_tx.pipeline",
    "export_tx.planning",
    "export_tx.transfer",
    "export_tx.storage",
    "export_tx.sources.postgres",
    "export_tx.sources.sqlite",
    "export_tx.formats.parquet",
    "export_tx.formats.csv",
    "export_tx.formats.jsonl",
    "export_tx.notifications.email",
)


def forks_tasks(argv: Sequence[str], executors: str, mode: str = "auto") -> bool:
    """Whether the Airflow command ``argv`` (``sys.argv``) forks task processes that should find
    the modules preloaded, with ``executors`` the ``[core] executor`` setting: a Celery worker; with
    ``mode`` ``on``, a scheduler running LocalExecutor too; with ``off``, nothing."""
    command = list(argv[1:3])
    if mode == "off":
        return False
    if command[:1] == ["scheduler"]:
        local = any(name.strip().rsplit(".", 1)[-1].split(":")[-1] == "LocalExecutor" for name in executors.split(","))
        return mode == "on" and local
    return command == ["celery", "worker"]


def preload(argv: Sequence[str] | None = None, executors: str | None = None) -> list[str]:
    """In a process that forks tasks (see :func:`forks_tasks`, ``EXPORT_TX_PRELOAD``), import :data:`TASK_MODULES`;
    returns what it imported. Never fails the process: a module that does not import is logged
    and skipped (the task imports it, or fails, itself)."""
    import sys

    from export_tx import config

    mode = config.preload_mode()
    if mode == "off":
        return []
    if executors is None:
        from airflow.configuration import conf

        executors = conf.get("core", "executor", fallback="") or ""
    if not forks_tasks(sys.argv if argv is None else argv, executors, mode):
        return []
    imported = []
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        except Exception:  # a broken optional part must not stop the scheduler
            log.warning("export_tx preload: %s did not import", name, exc_info=True)
            continue
        imported.append(name)
    return imported
