"""What one request costs the api-server, by route: the floor under the API targets' p99.

A fresh stack (LocalExecutor, SQLite databases, one api-server worker: the benchmark's) is warmed
up with one export, then its task slots are held (the default pool at 0 slots, as a full
deployment), so that only the api-server works on the requests (and its run maker, on the runs
of requested exports). For each route, ``--bursts`` times, ``--concurrency`` requests are sent at
once (threads of this process, each with a connection of its own); measured per burst:

* **CPU per request**: the api-server process's CPU time (user + system) over the burst ÷ the
  requests. One process answers them all and Python runs one thread at a time, so a burst's last
  answer comes no sooner than concurrency × this, whatever the cores.
* **slowest answer**: the burst's last answer, at the client (clients share the cores).

Routes: Airflow's own ``GET /api/v2/version`` (authenticated, no database: what any request
costs there), ``GET /exports/v1/me`` (the product's authentication and nothing else), the status
``GET /exports/v1/transactions/{id}`` and ``POST /exports/v1/transactions`` (each a new export:
one day of orders, ``force``; its run is created by the run maker, whose CPU per run is reported).

    .venv/bin/python -m bench.api_cost [--concurrency 50] [--bursts 5] [--routes version,me,status,post]

Results: printed, and ``bench/results/api_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.api_load import run_concurrently
from bench.baselines import DEFINITION
from bench.bench_export import parse_list, prepare_source, source_for
from bench.common import RESULTS_DIR, BenchError, note, step
from bench.probe import free_port

RESULT = RESULTS_DIR / "api_cost.json"
#: Seconds given to the run maker after a POST burst to create the burst's runs.
RUNS_SETTLE_S = 8.0


def _cpu_seconds(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


#: The routes measured, by the name ``--routes`` takes.
ROUTES = ("version", "me", "status", "post")


def measure(rows: int, concurrency: int, bursts: int, port: int, only: tuple[str, ...] = ROUTES) -> dict[str, Any]:
    import httpx
    import psutil

    from bench.product import first_full_day, source_engine, warm_up
    from devtools.stack import AirflowStack
    from export_tx.store import HeaderStore

    source = source_for(rows)
    prepare_source(source)
    home = Path(tempfile.mkdtemp(prefix="bench-api-cost-"))
    store_url = f"sqlite:///{home}/store.db"
    stack = AirflowStack(home, port=free_port(port), extra_env={
        "AIRFLOW_CONN_EXPORT_SOURCE_PG": source.dsn,
        "EXPORT_TX_STORE_URL": store_url,
        "EXPORT_TX_STORAGE_URI": f"file://{home}/exports",
        "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",
    })  # fmt: skip
    try:
        step(f"starting an Airflow stack in {home}")
        stack.migrate()
        stack.start()
        stack.wait_ready(timeout=300)
        time.sleep(3)
        store = HeaderStore(store_url)
        store.ensure_schema()
        warm_up(stack, store, source, 1)
        with stack.client("admin") as admin:
            held = admin.patch("/api/v2/pools/default_pool", params={"update_mask": "slots"}, json={"slots": 0})
            held.raise_for_status()
        engine = source_engine(source.dsn)
        try:
            with engine.connect() as conn:
                day = first_full_day(conn)
        finally:
            engine.dispose()
        days = iter(range(10_000))

        def request_body() -> dict[str, Any]:
            d = day + timedelta(days=next(days))
            return {"definition": DEFINITION, "params": {"since": str(d), "until": str(d)}, "force": True}

        with stack.client("analyst") as analyst:
            auth = {"Authorization": analyst.headers["Authorization"]}
            first = analyst.post("/exports/v1/transactions", json=request_body())  # the status read below
            if first.status_code != 202:
                raise BenchError(f"the first request was refused: {first.status_code} {first.text[:200]}")
        api = psutil.Process(stack.running_pids()["api-server"])
        makers = [c for c in api.children() if any("spawn_main" in part for part in c.cmdline())]
        every: dict[str, tuple[str, str, str]] = {
            "version": ("GET /api/v2/version (Airflow's own)", "GET", "/api/v2/version"),
            "me": ("GET /exports/v1/me (authentication only)", "GET", "/exports/v1/me"),
            "status": ("GET /exports/v1/transactions/{id} (status)", "GET",
                       f"/exports/v1/transactions/{first.json()['id']}"),
            "post": ("POST /exports/v1/transactions (a new export)", "POST", "/exports/v1/transactions"),
        }  # fmt: skip
        routes = [every[name] for name in only]
        results = []
        for label, method, path in routes:
            step(f"{label}: {bursts} bursts of {concurrency} at once")
            cpu, slowest, maker_ms = [], [], []
            for _ in range(bursts):
                items = [request_body() if method == "POST" else None for _ in range(concurrency)]

                def call(client: httpx.Client, body: Any, method: str = method, path: str = path) -> httpx.Response:
                    return client.post(path, json=body) if method == "POST" else client.get(path)

                before = _cpu_seconds(api)
                maker_before = sum(_cpu_seconds(m) for m in makers)
                timed = run_concurrently(
                    lambda: httpx.Client(base_url=stack.base_url, headers=auth, timeout=120), call, items, concurrency
                )
                used = _cpu_seconds(api) - before
                wrong = [t.answer.status_code for t in timed if t.answer.status_code not in (200, 202)]
                if wrong:
                    raise BenchError(f"{label}: {len(wrong)} answers were not 200/202 (e.g. {wrong[0]})")
                cpu.append(1000 * used / concurrency)
                slowest.append(1000 * max(t.seconds for t in timed))
                if method == "POST":
                    time.sleep(RUNS_SETTLE_S)
                    maker_ms.append(1000 * (sum(_cpu_seconds(m) for m in makers) - maker_before) / concurrency)
                note(f"CPU {cpu[-1]:.2f} ms per request, slowest answer {slowest[-1]:.0f} ms")
            result = {"route": label, "cpu_ms_per_request": [round(c, 2) for c in cpu],
                      "slowest_ms": [round(s, 1) for s in slowest],
                      "cpu_ms_median": round(statistics.median(cpu), 2),
                      "slowest_ms_median": round(statistics.median(slowest), 1)}  # fmt: skip
            if maker_ms:
                result["run_maker_cpu_ms_per_run"] = round(statistics.median(maker_ms), 1)
            results.append(result)
        return {"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "concurrency": concurrency,
                "bursts": bursts, "routes": results}  # fmt: skip
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def table(found: dict[str, Any]) -> list[str]:
    n = found["concurrency"]
    lines = [f"| route | api-server CPU per request (median of {found['bursts']} bursts) | × {n} | "
             f"slowest of {n} at once (median) |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in found["routes"]:
        extra = f"; run maker {r['run_maker_cpu_ms_per_run']} ms per run" if "run_maker_cpu_ms_per_run" in r else ""
        lines.append(f"| {r['route']} | {r['cpu_ms_median']:.2f} ms{extra} | {n * r['cpu_ms_median']:.0f} ms | "
                     f"{r['slowest_ms_median']:.0f} ms |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the benchmark's source table")
    parser.add_argument("--port", type=int, default=18170)
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated subset of {','.join(ROUTES)}")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.bursts < 1:
        parser.error("--concurrency and --bursts: at least 1")
    only = tuple(parse_list(args.routes, "routes", ROUTES))
    found = measure(args.rows, args.concurrency, args.bursts, args.port, only)
    print("\n".join(table(found)))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(found, indent=2) + "\n")
    print(f"results: {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
