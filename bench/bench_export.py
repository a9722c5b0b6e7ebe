"""Benchmark: the `orders` export through the real Airflow stack vs. single-process baselines,
at several sizes of the source table (issue 10).

    .venv/bin/python -m bench.bench_export [--rows 1000000,5000000,20000000]
        [--contenders naive,adbc,connectorx,product] [--api-exports 50] [--batch-size N] [--port P]
        [--wait-quiet S] [--no-readme]

What is measured, per size (every figure of a size comes from the same run, on the same table):

* **Source.** A PostgreSQL table ``orders`` in its own database ``export_tx_bench_<rows>`` on
  127.0.0.1:5432 (user postgres, trust auth), generated server-side by
  :func:`devtools.demo_data.generate_orders_pg`. It is reused when it already holds exactly that many
  rows; a freshly generated table is VACUUMed so no contender pays for hint bits.
* **naive** (own subprocess): ``pandas.read_sql`` (SQLAlchemy + psycopg 3) of what the ``orders``
  definition selects with every param unset, e-mails masked with ``Series.str.replace``, then
  ``DataFrame.to_parquet`` (snappy). Skipped when its estimated peak (rows × 1,580 bytes: it took
  7.9 GB for 5M rows) exceeds half of MemAvailable; each run's own bytes per row is in the JSON.
* **adbc** (own subprocess): the ADBC PostgreSQL driver streams record batches (COPY) into a
  ``ParquetWriter`` (zstd, ~1M-row row groups), each batch conformed to the product's types and
  masked by the definition's own transform.
* **connectorx** (own subprocess): ``connectorx.read_sql(dsn, query, return_type="arrow",
  partition_on="order_id", partition_num=<cores>)`` reads the whole result in parallel into one
  Arrow table (materialised: its peak RSS grows with the table), then conformed, masked and
  written like adbc.
* **product**: a fresh Airflow stack per size (api-server, scheduler, dag-processor, triggerer;
  LocalExecutor, SQLite metadata) whose ``AIRFLOW_CONN_EXPORT_SOURCE_PG`` names that size's
  database (task processes read the connection from their environment, so one stack per size is
  the honest way to switch it). Timed from just before the REST trigger of ``{"definition":
  "orders", "params": {}}`` (``batch_size`` only with ``--batch-size``: otherwise the product
  chooses) until the transaction header is SUCCEEDED (polled every 0.1 s). Housekeeping's
  schedule is off on these stacks: its first run would start with the stack, inside the timed export.

Ratios are to the **fastest baseline of that size** (named in the output); MB are 10^6 bytes
(the 512 MB merge target too). Wall time of a
baseline runs from connecting to the closed file (interpreter start and imports excluded; the
subprocess' total is in the JSON); its peak RSS is its own ``ru_maxrss``. The product's peak RSS
is the peak, over samples every 0.1 s (read from ``/proc``), of the summed RSS of every process of
the stack (an upper bound: pages shared between forked processes count more than once). Each task
process is named ``airflow worker -- <task instance id>`` by Airflow's task runner; the REST API
(``/dagRuns/{run_id}/taskInstances``) maps that id to task_id and map_index, which gives the peak
RSS (the kernel's high-water mark ``VmHWM``, like a baseline's ``ru_maxrss``) of each batch task,
also per 100k rows of its batch, and of the merge: the product merges in the batch task that
finishes last (else in ``merge_parts``); see :mod:`bench.task_memory` for how that one process'
figure is split between its batch and its merge. A task process that ends between two samples
is not seen.

Also on the product's stacks:

* **~10,000-row export**: on the stack of the size nearest 1,000,000 rows, an ``orders`` export
  whose ``since``/``until`` (whole days, and a ``status`` if one day holds too many rows) select
  the count nearest 10,000 (the exact count is reported), requested through
  ``POST /exports/v1/transactions`` 3 times, each timed POST → header SUCCEEDED (min and median).
* **API load** (``--api-exports N``, default 50; 0 skips it), on every product stack after its big
  export. POST: N exports (one day of orders each) requested at once from N threads, one client
  each → p50/p99/max. Status: right after, N pollers, one per transaction and one client each,
  poll their own ``GET /exports/v1/transactions/{id}`` once a second (first poll at a random moment
  of the first second), like clients following their export, until it is terminal and at least
  20 s have passed → p50/p99/max over all polls. Targets: POST p99 ≤ 250 ms, status p99 ≤ 20 ms.

Correctness is checked for every contender and every export: the file's row count must equal the
source count (for the product also the header SUCCEEDED with ``result_rows`` equal to it, and every
API answer right); otherwise the benchmark aborts. The machine may be shared: before each contender
the benchmark waits (``--wait-quiet``, default 600 s) until no other Airflow process runs, and flags
every contender that another Airflow stack may have disturbed.

Output: per size a table (contender, wall s, rows/s, peak RSS, file MB, ratio), the product's
details, then a summary against the targets. Written to ``bench/results/``: ``latest.json``
(everything), ``latest.md`` (tables, targets, machine), ``latest.png`` (wall time and peak RSS vs
rows) and ``phases.png`` (the product's phases per size); the README's block between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` gets ``latest.md`` and both charts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.baselines import BASELINES, NAIVE_BYTES_PER_ROW, SOURCE_TABLE, baseline_child, naive_fits, run_baseline
from bench.common import CONTENDERS, GB, LABELS, PG_SERVER, RESULTS_DIR, BenchError, Result, note, step
from bench.probe import free_port, other_airflow_processes, wait_until_quiet
from bench.product import ProductOptions, Source, run_product
from bench.report import SizeRun, chart, markdown, phases, phases_chart, print_report, targets, update_readme

DEFAULT_ROWS = "1000000,5000000,20000000"
DEFAULT_PORT = 18090
API_EXPORTS = 50
DATABASE_PREFIX = "export_tx_bench_"


# -- the sources -----------------------------------------------------------------------------


def source_for(rows: int) -> Source:
    database = f"{DATABASE_PREFIX}{rows}"
    return Source(rows, database, f"{PG_SERVER}/{database}")


def source_count(dsn: str) -> int | None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM {SOURCE_TABLE}").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return int(row[0]) if row else None


def prepare_source(source: Source) -> tuple[bool, float | None]:
    """Create the database and the table (unless it holds exactly ``rows``); return whether the
    table was reused and how long generating it took."""
    import psycopg
    from psycopg import sql

    from devtools.demo_data import generate_orders_pg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (source.database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source.database)))
    if source_count(source.dsn) == source.rows:
        return True, None
    started = time.perf_counter()
    generate_orders_pg(source.dsn, source.rows, SOURCE_TABLE)
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {SOURCE_TABLE}")  # set hint bits now, not in the first contender
    took = time.perf_counter() - started
    count = source_count(source.dsn)
    if count != source.rows:
        raise BenchError(f"generated {source.rows:,} rows but {source.database}.{SOURCE_TABLE} holds {count}")
    return False, took


# -- one size --------------------------------------------------------------------------------


def run_contender(kind: str, source: Source, run: SizeRun, args: argparse.Namespace, small: bool) -> Result:
    step(LABELS[kind] + (" (subprocess)" if kind in BASELINES else ""))
    others = wait_until_quiet(args.wait_quiet)
    if others:
        run.disturbed.append(kind)
        note(f"WARNING: {len(others)} other Airflow processes are running; figures will be disturbed")
    load = os.getloadavg()[0]
    if kind == "product":
        # The ~10k-row export and the API load run on one stack (the size nearest 1M): minutes saved.
        options = ProductOptions(free_port(args.port), args.batch_size, args.api_exports if small else 0, small,
                                 args.databases, args.api_workers)  # fmt: skip
        result = run_product(source, options)
    else:
        result = run_baseline(kind, source.dsn, source.rows)
        result.details["other_airflow_processes_after"] = other_airflow_processes()
    result.details.update({"load_1min_before": load, "other_airflow_processes_before": others})
    if result.details["other_airflow_processes_after"] and kind not in run.disturbed:
        run.disturbed.append(kind)
        note("WARNING: other Airflow processes started during this measurement")
    note(f"{result.wall_s:.2f} s, peak RSS {result.peak_rss_bytes / GB:.2f} GB")
    return result


def run_size(rows: int, contenders: list[str], args: argparse.Namespace, small: bool) -> SizeRun:
    source = source_for(rows)
    step(f"source: {SOURCE_TABLE} in {source.dsn}")
    reused, took = prepare_source(source)
    note(f"reused the existing table: {rows:,} rows" if reused else f"generated {rows:,} rows in {took:.1f} s")
    run = SizeRun(rows, source.database, reused, took)
    for kind in contenders:
        if kind == "naive":
            fits, figures = naive_fits(rows, NAIVE_BYTES_PER_ROW)
            if not fits:
                reason = f"skipped: would need ~{figures['estimated_peak_bytes'] / GB:.1f} GB"
                step(f"{LABELS[kind]}: {reason} (more than half of the {figures['mem_available_bytes'] / GB:.1f} GB "
                     f"available; {figures['bytes_per_row']:,.0f} bytes per row)")  # fmt: skip
                run.skipped[kind] = {"reason": reason, **figures}
                continue
        run.results.append(run_contender(kind, source, run, args, small))
    return run


def small_export_size(sizes: list[int]) -> int:
    """The size whose stack runs the ~10k-row export: the one nearest 1,000,000 rows (log scale)."""
    return min(sizes, key=lambda n: abs(math.log(n / 1_000_000)))


# -- the machine -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import psycopg

    cpu = "unknown"
    memory_kb = 0
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as info:
        memory_kb = next((int(line.split()[1]) for line in info if line.startswith("MemTotal:")), 0)
    with psycopg.connect(f"{PG_SERVER}/postgres") as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "postgresql": row[0] if row else "unknown",
        "python": platform.python_version(),
        **{
            name.removeprefix("apache-"): version(name)
            for name in ("apache-airflow", "pyarrow", "pandas", "connectorx")
        },
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# -- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rows", default=os.environ.get("BENCH_ROWS") or DEFAULT_ROWS,
                        help=f"comma-separated source sizes (default {DEFAULT_ROWS})")  # fmt: skip
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=int(os.environ.get("BENCH_BATCH_SIZE") or 0) or None,
                        help="batch_size of the product's big export (default: none, the product chooses)")  # fmt: skip
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT") or DEFAULT_PORT))
    parser.add_argument("--wait-quiet", type=float, default=float(os.environ.get("BENCH_WAIT_QUIET") or 600),
                        help="seconds to wait, before each contender, for other Airflow processes to end")  # fmt: skip
    parser.add_argument("--api-exports", type=int, default=int(os.environ.get("BENCH_API_EXPORTS") or API_EXPORTS),
                        help="exports requested at once, then polled, on each product stack (0: skip)")  # fmt: skip
    parser.add_argument("--databases", choices=("sqlite", "postgresql"),
                        default=os.environ.get("BENCH_DATABASES") or "sqlite",
                        help="where the product's Airflow metadata and header store live (default: sqlite, "
                             "the embedded default; postgresql: production's, on the source's server)")  # fmt: skip
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("BENCH_API_WORKERS") or 1),
                        help="the product's api-server worker processes ([api] workers; default 1)")  # fmt: skip
    parser.add_argument("--no-readme", action="store_true", help="leave README.md's bench block as it is")
    parser.add_argument("--baseline", choices=BASELINES, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.api_workers < 1:
        parser.error("--api-workers: at least 1")
    return args


def parse_list(text: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    wrong = [item for item in items if allowed is not None and item not in allowed]
    if not items or wrong:
        raise SystemExit(f"--{what}: expected a comma-separated list{' of ' + ','.join(allowed) if allowed else ''}")
    return items


def document(runs: list[SizeRun], found: list[Any], info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def size(run: SizeRun) -> dict[str, Any]:
        reference = run.reference
        results = []
        for r in run.results:
            entry = {**asdict(r), "label": LABELS[r.contender], "rows_per_s": r.rows_per_s,
                     "vs_fastest_baseline": r.wall_s / reference.wall_s if reference else None}  # fmt: skip
            if r.contender == "product":
                entry["phases_s"] = dict(phases(r.details.get("events", []), r.wall_s))
            results.append(entry)
        return {"rows": run.rows, "database": run.database, "source_reused": run.source_reused,
                "generation_s": run.generation_s, "fastest_baseline": reference.contender if reference else None,
                "results": results, "skipped": run.skipped, "disturbed": run.disturbed}  # fmt: skip

    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if k not in ("baseline", "dsn")},
        "sizes": [size(run) for run in runs],
        "targets": [asdict(t) for t in found],
    }


def write_outputs(runs: list[SizeRun], found: list[Any], info: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest.json").write_text(
        json.dumps(document(runs, found, info, args), indent=2, default=str) + "\n"
    )
    text = markdown(runs, found, info)
    (RESULTS_DIR / "latest.md").write_text(text)
    chart(runs, RESULTS_DIR / "latest.png")
    phases_chart(runs, RESULTS_DIR / "phases.png")
    print(
        f"results: {', '.join(f'bench/results/{n}' for n in ('latest.json', 'latest.md', 'latest.png', 'phases.png'))}"
    )
    if args.no_readme:
        print("README.md left as it is (--no-readme)")
    elif update_readme(text):
        print("README.md: the bench block is updated")
    else:
        print("note: README.md has no <!-- bench:start --> / <!-- bench:end --> markers; it was left as it is")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        return baseline_child(args.baseline, args.dsn)
    sizes = sorted({int(n.replace("_", "")) for n in parse_list(args.rows, "rows")})
    wanted = parse_list(args.contenders, "contenders", CONTENDERS)
    contenders = [c for c in CONTENDERS if c in wanted]
    info = machine()
    print(f"machine: {info['nproc']} cores ({info['cpu_model']}), {info['memory_gb']} GB RAM")
    print(f"sizes: {', '.join(f'{n:,}' for n in sizes)}   contenders: {', '.join(contenders)}   product batch_size: "
          f"{args.batch_size or 'chosen by the product'}")  # fmt: skip
    small = small_export_size(sizes)
    runs: list[SizeRun] = []
    try:
        for rows in sizes:
            print(f"\n#### {rows:,} rows", flush=True)
            runs.append(run_size(rows, contenders, args, small=rows == small))
    except BenchError as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        return 1
    found = targets(runs)
    print_report(runs, found, info)
    write_outputs(runs, found, info, args)
    # ~10 s in-process beside minutes of stacks: what a transform costs, Arrow vs pandas.
    from bench import transform_cost

    print()
    return transform_cost.main([])


if __name__ == "__main__":
    raise SystemExit(main())
