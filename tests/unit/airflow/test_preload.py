"""The processes that fork Airflow's task processes import what export tasks import, once: by
default (EXPORT_TX_PRELOAD=auto) a Celery worker; with ``on`` a scheduler running LocalExecutor too;
no other process, and nothing with ``off``. Each probe runs in a fresh interpreter (imports cannot
be undone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export_tx.airflow.preload import TASK_MODULES, forks_tasks

SCHEDULER, WORKER = ["airflow", "scheduler"], ["airflow", "celery", "worker"]


@pytest.mark.parametrize(
    ("argv", "executors", "mode", "expected"),
    [
        (SCHEDULER, "LocalExecutor", "on", True),
        (SCHEDULER, "airflow.executors.local_executor.LocalExecutor", "on", True),
        (SCHEDULER, "CeleryExecutor,LocalExecutor", "on", True),
        (SCHEDULER, "team_a:LocalExecutor", "on", True),
        (SCHEDULER, "LocalExecutor", "auto", False),  # shares its machine's cores with the api-server
        (SCHEDULER, "LocalExecutor", "off", False),
        (SCHEDULER, "CeleryExecutor", "on", False),
        (SCHEDULER, "KubernetesExecutor", "on", False),
        (WORKER, "CeleryExecutor", "auto", True),
        (WORKER, "CeleryExecutor", "on", True),
        (WORKER, "CeleryExecutor", "off", False),
        (["airflow", "celery", "flower"], "CeleryExecutor", "on", False),
        (["airflow", "api-server"], "LocalExecutor", "on", False),
        (["airflow", "dag-processor"], "LocalExecutor", "on", False),
        (["airflow", "triggerer"], "LocalExecutor", "on", False),
        (["airflow"], "LocalExecutor", "on", False),
        (["pytest"], "LocalExecutor", "on", False),
    ],
)
def test_only_the_processes_that_fork_tasks_preload(argv: list[str], executors: str, mode: str, expected: bool) -> None:
    assert forks_tasks(argv, executors, mode) is expected


PROBE = """
import json, os, sys, threading
from export_tx.airflow.preload import preload
imported = preload(sys.argv[1:], "LocalExecutor")
threads = threading.active_count()
child = os.fork()
if child == 0:  # as LocalExecutor's worker forks a task: pyarrow and ADBC work in the child
    import adbc_driver_sqlite.dbapi as sqlite
    import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
    table = pa.table({"n": pa.array(range(100_000), pa.int64())})
    pq.write_table(table.filter(pc.greater_equal(table["n"], 50_000)), os.environ["PROBE_FILE"], row_group_size=7_000)
    with sqlite.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2")
        assert cur.fetch_arrow_table().column(0).to_pylist() == [42]
    os._exit(0)
_, status = os.waitpid(child, 0)
print(json.dumps({"imported": imported, "threads": threads, "child": status,
                  "pyarrow": "pyarrow" in sys.modules, "pipeline": "export_tx.pipeline" in sys.modules}))
"""


def _probe(argv: list[str], tmp_path: Path, preload: str | None = None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "EXPORT_TX_PRELOAD"}
    env["PROBE_FILE"] = str(tmp_path / "part.parquet")
    if preload is not None:
        env["EXPORT_TX_PRELOAD"] = preload
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("argv", "preload"), [(SCHEDULER, "on"), (WORKER, None)])
def test_a_forking_process_preloads_and_the_tasks_it_forks_use_what_it_imported(
    argv: list[str], preload: str | None, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    found = _probe(argv, tmp_path, preload)
    assert found["imported"] == list(TASK_MODULES)  # every module, this install has them all
    assert found["pyarrow"] is True and found["pipeline"] is True
    assert found["threads"] == 1  # no Python thread started before the fork
    assert found["child"] == 0
    written = pq.read_table(tmp_path / "part.parquet")
    assert written.num_rows == 50_000 and written.column("n").to_pylist() == list(range(50_000, 100_000))


@pytest.mark.parametrize(
    ("argv", "preload"),
    [(["airflow", "api-server"], "on"), (SCHEDULER, None), (SCHEDULER, "off"), (WORKER, "off")],
)
def test_nothing_is_preloaded_elsewhere_by_default_or_when_turned_off(
    argv: list[str], preload: str | None, tmp_path: Path
) -> None:
    found = _probe(argv, tmp_path, preload)
    assert found["imported"] == [] and found["pipeline"] is False
