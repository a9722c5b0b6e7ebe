"""Capacity: many small exports queued at once, through a real Airflow stack, at several parallelisms.

For each ``[core] parallelism`` given, a fresh stack (LocalExecutor, the settings the README
recommends) receives ``--exports`` small exports (one day of ``orders`` each, a few thousand
rows) requested at once through ``POST /exports/v1/transactions`` from 20 threads. The run
measures, until every export is terminal:

* **throughput** — exports finished per minute, from the first request to the last ``SUCCEEDED``;
* **latency** — each export's request → ``SUCCEEDED`` (p50/p99/max), queueing included;
* **cost** — CPU seconds the whole stack spent (every component, executor worker, supervisor and
  task process: their own and their reaped children's CPU time) per export and per task instance,
  the fixed cost that bounds how many exports a core can carry a day.

Every export must end ``SUCCEEDED`` with exactly the rows the source holds for its day; otherwise
the run aborts. Results go to ``bench/results/capacity.json`` and are printed as a table.

    .venv/bin/python -m bench.capacity [--exports 200] [--parallelism 2,4,8] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench.api_load import percentile, run_concurrently

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "capacity.json"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
TIMEOUT_S = 3600.0
THREADS = 20


class CapacityError(RuntimeError):
    """The run cannot give honest figures (a failed export, a wrong row count)."""


def stack_cpu_seconds(leaders: list[int]) -> float:
    """CPU time of the stack's component processes, their live descendants, and every child they
    reaped (task processes that ended count through their parents' children times)."""
    import psutil

    seen: set[int] = set()
    total = 0.0
    for pid in leaders:
        try:
            leader = psutil.Process(pid)
            family = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def days_with_rows(dsn: str, count: int) -> list[tuple[date, int]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT created_at::date AS d, count(*) FROM orders GROUP BY 1 HAVING count(*) > 0 ORDER BY 1 OFFSET 1"
        ).fetchall()
    if len(rows) < count:
        raise CapacityError(f"the source has {len(rows)} days of orders; {count} exports need as many")
    step = max(1, len(rows) // count)
    return [(d, int(n)) for d, n in rows[::step][:count]]


def run_one(parallelism: int, exports: int, dsn: str, port: int) -> dict[str, Any]:
    from devtools.stack import AirflowStack
    from export_tx.store import HeaderStore

    home = Path(tempfile.mkdtemp(prefix=f"bench-capacity-{parallelism}-"))
    store_url = f"sqlite:///{home}/store.db"
    stack = AirflowStack(
        home,
        port=port,
        extra_env={
            "AIRFLOW_CONN_EXPORT_SOURCE_PG": dsn,
            "EXPORT_TX_STORE_URL": store_url,
            "EXPORT_TX_STORAGE_URI": f"file://{home}/exports",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(16, parallelism)),
        },
    )
    try:
        stack.migrate()
        stack.start()
        stack.wait_ready(timeout=300)
        time.sleep(3)
        leaders = list(stack.running_pids().values())
        days = days_with_rows(dsn, exports)
        bodies = [{"definition": "orders", "params": {"since": str(d), "until": str(d)}} for d, _ in days]
        with stack.client("analyst") as analyst:
            auth = {"Authorization": analyst.headers["Authorization"]}
        import httpx

        def client() -> httpx.Client:
            return httpx.Client(base_url=stack.base_url, headers=auth, timeout=120)

        cpu_before = stack_cpu_seconds(leaders)
        started = time.time()
        posted = run_concurrently(
            client, lambda c, body: c.post("/exports/v1/transactions", json=body), bodies, THREADS
        )
        refused = [t.answer.text[:200] for t in posted if t.answer.status_code != 202]
        if refused:
            raise CapacityError(f"{len(refused)} requests were refused: {refused[0]}")
        ids = [str(t.answer.json()["id"]) for t in posted]
        store = HeaderStore(store_url)
        pending = set(ids)
        deadline = time.monotonic() + TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise CapacityError(f"{len(pending)} exports did not finish in {TIMEOUT_S:.0f} s")
            for tx_id in list(pending):
                if store.get(tx_id).terminal:
                    pending.discard(tx_id)
            time.sleep(0.5)
        cpu_after = stack_cpu_seconds(leaders)
        headers = [store.get(tx_id) for tx_id in ids]
        for header, (day, rows) in zip(headers, days, strict=True):
            if header.state.value != "SUCCEEDED" or header.result_rows != rows:
                raise CapacityError(f"{header.id} ({day}): {header.state.value}, {header.result_rows} rows of {rows}")
        finished = max(h.finished_at.timestamp() for h in headers if h.finished_at)
        latencies = [(h.finished_at - h.created_at).total_seconds() for h in headers if h.finished_at]
        tasks = sum(5 + (h.batches_total or 0) for h in headers)  # begin, plan, N batches, merge, notify, finalize
        wall = finished - started
        cpu = cpu_after - cpu_before
        return {
            "parallelism": parallelism,
            "exports": exports,
            "rows_per_export_mean": round(sum(r for _, r in days) / exports),
            "wall_s": round(wall, 1),
            "exports_per_minute": round(exports / wall * 60, 1),
            "latency_s": {
                "p50": round(percentile(latencies, 50), 1),
                "p99": round(percentile(latencies, 99), 1),
                "max": round(max(latencies), 1),
            },
            "task_instances": tasks,
            "stack_cpu_s": round(cpu, 1),
            "cpu_s_per_export": round(cpu / exports, 2),
            "cpu_s_per_task": round(cpu / tasks, 2),
        }
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def ensure_source(rows: int) -> str:
    import psycopg
    from psycopg import sql

    from devtools.demo_data import generate_orders_pg

    database = f"export_tx_bench_{rows}"
    dsn = f"{PG_SERVER}/{database}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            count = conn.execute("SELECT count(*) FROM orders").fetchone()
        except psycopg.errors.UndefinedTable:
            count = None
    if count is None or count[0] != rows:
        generate_orders_pg(dsn, rows, "orders")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) orders")
    return dsn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--exports", type=int, default=200)
    parser.add_argument("--parallelism", default="2,4,8", help="comma-separated [core] parallelism values")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the source table (one day ~ rows/730)")
    parser.add_argument("--port", type=int, default=18150)
    args = parser.parse_args(argv)
    levels = [int(p) for p in args.parallelism.split(",") if p.strip()]
    dsn = ensure_source(args.rows)
    print(f"{args.exports} small exports queued at once, {os.cpu_count()} cores, parallelism {levels}", flush=True)
    results = []
    try:
        for level in levels:
            print(f"==> parallelism {level}", flush=True)
            results.append(run_one(level, args.exports, dsn, args.port))
            print(f"    {json.dumps(results[-1])}", flush=True)
    except CapacityError as exc:
        print(f"capacity run aborted: {exc}", file=sys.stderr)
        return 1
    header = (
        f"{'parallelism':>11} {'exports/min':>11} {'p50 s':>7} {'p99 s':>7} {'CPU s/export':>12} {'CPU s/task':>10}"
    )
    print(header)
    for r in results:
        print(f"{r['parallelism']:>11} {r['exports_per_minute']:>11} {r['latency_s']['p50']:>7} "
              f"{r['latency_s']['p99']:>7} {r['cpu_s_per_export']:>12} {r['cpu_s_per_task']:>10}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    per_day = [math.floor(86_400 / r["cpu_s_per_export"]) for r in results]
    RESULTS.write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(),
                                   "runs": results, "exports_per_core_day": per_day}, indent=2) + "\n")  # fmt: skip
    print(f"results: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
