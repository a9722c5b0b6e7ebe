"""Benchmark: the `orders` export through the real Airflow stack vs. single-process baselines.

What is measured (every figure comes from the same run, on the same source table):

* **Source.** A PostgreSQL table ``orders`` in the database ``export_tx_bench`` on 127.0.0.1:5432
  (user postgres, trust auth), generated server-side by :func:`export_tx.demo.generate_orders_pg`
  with ``--rows`` / ``BENCH_ROWS`` rows (default 5,000,000). It is reused when it already holds
  exactly that many rows; a freshly generated table is VACUUMed so no contender pays for hint bits.
* **naive** (own subprocess): ``pandas.read_sql`` (SQLAlchemy + psycopg 3) of what the ``orders``
  definition selects with every param unset (``SELECT <its columns> FROM orders ORDER BY order_id``),
  e-mails masked with ``Series.str.replace`` (the definition's regex), then ``DataFrame.to_parquet``
  with pandas' defaults (snappy).
* **adbc** (own subprocess): the best single-process way we know: the ADBC PostgreSQL driver streams
  record batches of the same query (COPY, no bound parameters) straight into a
  ``pyarrow.parquet.ParquetWriter`` (zstd, ~1M-row row groups), each batch conformed to the
  types the product derives from the table (``amount`` as decimal128(12,2)) and masked by the definition's own
  transform: the work the product does per row. This is the reference for the time ratios.
* **product**: a fresh Airflow stack (api-server, scheduler, dag-processor, triggerer; LocalExecutor,
  SQLite metadata) in a temporary home on its own port, with the source as connection
  ``export_source_pg``, the header store in SQLite and the exports in a local folder. Timed from just
  before the REST trigger of ``{"definition": "orders", "params": {}, "batch_size": N}`` until the
  transaction header is SUCCEEDED (polled every 0.2 s), so it includes scheduling, planning, the
  mapped batch tasks and the merge. ``N`` defaults to rows/4 rounded up (``BENCH_BATCH_SIZE``).

Wall time of the baselines runs from connecting to the closed file (interpreter start and imports
excluded; the subprocess' total is in the JSON). Peak RSS of a baseline is its own
``ru_maxrss``. Peak RSS of the product is the peak, over samples every 0.2 s (psutil, in a thread),
of the summed RSS of every process of the stack: the components' process groups and all their
descendants (executor workers, task supervisors, task processes). Summed RSS counts pages shared
between forked processes more than once, so it is an upper bound; the largest single task process
(``airflow worker -- …``) is reported separately.

Correctness is checked for every contender: the file's row count (Parquet metadata) must equal the
source count, and for the product the header must be SUCCEEDED with ``result_rows`` equal to it;
otherwise the benchmark aborts. Results are printed as a table and written to
``bench/results/latest.json``.

The machine may be shared: before each contender the benchmark waits (``--wait-quiet``, default
600 s) until no other Airflow process runs, and it flags, in the output and the JSON, every
contender that another Airflow stack may have disturbed.

    .venv/bin/python -m bench.bench_export [--rows N] [--api-exports N] [--batch-size N] [--port P] [--wait-quiet S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO / "bench" / "results" / "latest.json"

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
BENCH_DB = "export_tx_bench"
SOURCE_DSN = f"{PG_SERVER}/{BENCH_DB}"
SOURCE_TABLE = "orders"
DEFINITION = "orders"

DEFAULT_ROWS = 5_000_000
DEFAULT_PORT = 18090
SAMPLE_SECONDS = 0.2
PRODUCT_TIMEOUT_S = 3600.0
MB = 1_000_000

BASELINES = ("naive", "adbc")
LABELS = {
    "naive": "naive: pandas read_sql + to_parquet",
    "adbc": "best single process: ADBC -> ParquetWriter",
    "product": "product: Airflow export_transaction",
}
REFERENCE = "adbc"


class BenchError(RuntimeError):
    """The benchmark cannot produce honest figures (setup failed or a result was wrong)."""


@dataclass
class Result:
    contender: str
    wall_s: float
    rows: int
    file_bytes: int
    peak_rss_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0


# -- the query every contender runs --------------------------------------------------------


def source_query() -> str:
    """What the ``orders`` definition selects with every param unset, in key order.

    With its params unset the definition's WHERE clause is always true, so this plain query
    returns the same rows. It binds no parameters on purpose: given bound parameters the ADBC
    PostgreSQL driver cannot use COPY and materialises the whole result (libpq ``PGresult`` plus
    one Arrow batch) before returning a single batch, which is not the best a single process can do.
    """
    from export_tx import registry

    definition = registry.get(DEFINITION)
    columns = ", ".join(orders_schema().names)
    return f"SELECT {columns} FROM {SOURCE_TABLE} ORDER BY {definition.key_column}"


def orders_schema() -> Any:
    """The file's types, as the product derives them from the table (``ORDERS_PG_DDL``)."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    return pa.schema([
        ("order_id", pa.int64()), ("customer_id", pa.int64()), ("customer_email", pa.string()),
        ("status", pa.string()), ("amount", pa.decimal128(12, 2)), ("currency", pa.string()),
        ("quantity", pa.int32()), ("product_sku", pa.string()), ("country", pa.string()),
        ("created_at", utc), ("updated_at", utc), ("note", pa.string()),
    ])  # fmt: skip


# -- baselines (each runs in its own subprocess) -------------------------------------------


def run_naive(out: Path) -> int:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(SOURCE_DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        frame = pd.read_sql(sa.text(source_query()), engine)
    finally:
        engine.dispose()
    # Same masking as the definition's transform: ana.lopez@example.com -> a***@example.com.
    frame["customer_email"] = frame["customer_email"].str.replace(r"^([^@])[^@]*@", r"\1***@", regex=True)
    frame.to_parquet(out)
    return len(frame)


def run_adbc(out: Path) -> int:
    import adbc_driver_postgresql.dbapi as pg_dbapi
    import pyarrow as pa
    import pyarrow.parquet as pq

    from export_tx.conversions import conform
    from export_tx.definitions.orders import mask_email
    from export_tx.parquet_io import COMPRESSION
    from export_tx.settings import ROW_GROUP_ROWS

    schema = orders_schema()

    rows = 0
    buffered: list[pa.RecordBatch] = []
    buffered_rows = 0
    with pg_dbapi.connect(SOURCE_DSN) as conn, conn.cursor() as cur:
        cur.execute(source_query())
        reader = cur.fetch_record_batch()
        with pq.ParquetWriter(out, schema, compression=COMPRESSION) as writer:
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                buffered.append(mask_email(conform(batch, schema)))
                buffered_rows += batch.num_rows
                if buffered_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(buffered, schema), row_group_size=ROW_GROUP_ROWS)
                    rows += buffered_rows
                    buffered, buffered_rows = [], 0
            if buffered:
                writer.write_table(pa.Table.from_batches(buffered, schema), row_group_size=ROW_GROUP_ROWS)
                rows += buffered_rows
    return rows


def baseline_child(kind: str) -> int:
    """Run one baseline in this process; print one JSON line with its figures."""
    import pyarrow.parquet as pq

    runner = {"naive": run_naive, "adbc": run_adbc}[kind]
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-export-{kind}-"))
    try:
        out = workdir / "orders.parquet"
        started = time.perf_counter()
        rows = runner(out)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        metadata = pq.ParquetFile(out).metadata
        report = {
            "contender": kind,
            "wall_s": wall,
            "rows": rows,
            "file_rows": metadata.num_rows,
            "row_groups": metadata.num_row_groups,
            "file_bytes": out.stat().st_size,
            "peak_rss_bytes": peak,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report), flush=True)
    return 0


def run_baseline(kind: str, expected_rows: int) -> Result:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--baseline", kind],
        capture_output=True,
        text=True,
        check=False,
    )
    process_wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"baseline {kind} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"baseline {kind} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    report = json.loads(lines[-1])
    for what in ("rows", "file_rows"):
        if report[what] != expected_rows:
            raise BenchError(f"baseline {kind}: {what} = {report[what]:,}, but the source holds {expected_rows:,}")
    return Result(
        contender=kind,
        wall_s=float(report["wall_s"]),
        rows=int(report["rows"]),
        file_bytes=int(report["file_bytes"]),
        peak_rss_bytes=int(report["peak_rss_bytes"]),
        details={"row_groups": report["row_groups"], "process_wall_s": round(process_wall, 3)},
    )


# -- the product through the Airflow stack -------------------------------------------------


class StackSampler:
    """Samples, every ``interval`` s in a thread, the RSS of every process of an Airflow stack."""

    def __init__(self, leaders: set[int], interval: float = SAMPLE_SECONDS) -> None:
        self.leaders = leaders
        self.interval = interval
        self.peak_total = 0
        self.samples = 0
        self.task_peaks: dict[int, tuple[int, str]] = {}
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def processes(self) -> list[Any]:
        """The components' process groups plus all their descendants (task processes get groups of their own)."""
        import psutil

        found: dict[int, psutil.Process] = {}
        for pid in self.leaders:
            try:
                leader = psutil.Process(pid)
                found[pid] = leader
                for child in leader.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        for pid in psutil.pids():
            if pid in found:
                continue
            try:
                if os.getpgid(pid) in self.leaders:
                    found[pid] = psutil.Process(pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return list(found.values())

    def sample(self) -> int:
        import psutil

        total = 0
        for proc in self.processes():
            try:
                rss = int(proc.memory_info().rss)
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            total += rss
            self.seen.add(proc.pid)
            if is_task_process(title):
                previous = self.task_peaks.get(proc.pid, (0, title))[0]
                self.task_peaks[proc.pid] = (max(previous, rss), title)
        self.peak_total = max(self.peak_total, total)
        self.samples += 1
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def largest_task(self) -> tuple[int, str]:
        return max(self.task_peaks.values(), default=(0, ""))


def is_task_process(title: str) -> bool:
    """The process running a task's code: ``airflow worker -- <ti id>`` (airflow.sdk's task runner),
    not an executor worker (``airflow worker -- LocalExecutor: …``) nor a supervisor."""
    return title.startswith("airflow worker --") and "LocalExecutor" not in title


def other_airflow_processes(exclude: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Airflow processes on this machine that are not ours (someone else's stack disturbs the figures)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["pid"] in exclude:
            continue
        title = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and ("airflow " in title or "bin/airflow" in title):
            found.append(f"{proc.info['pid']} {title[:100]}")
    return found


def wait_until_quiet(timeout: float) -> list[str]:
    """Wait up to ``timeout`` s until no other Airflow process runs; return those still running."""
    deadline = time.monotonic() + timeout
    others = other_airflow_processes()
    if others:
        print(f"    waiting up to {timeout:.0f} s for {len(others)} other Airflow processes to end", flush=True)
    while others and time.monotonic() < deadline:
        time.sleep(5)
        others = other_airflow_processes()
    return others


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


API_EXPORTS = 50
API_POLLS = 200
API_POLLERS = 20


def run_api_load(stack: Any, store: Any, exports: int) -> dict[str, Any]:
    """``exports`` small exports (one day of orders each) requested at once, then 200 status polls
    from 20 threads while they run; every export must end SUCCEEDED with the rows the source holds
    for its day. Returns the POST and status latencies (p50/p99/max, ms)."""
    from datetime import timedelta

    import httpx
    import psycopg

    from bench.api_load import latency_summary, run_concurrently
    from export_tx.settings import BATCH_SIZE_MAX

    with psycopg.connect(SOURCE_DSN) as conn:
        first = conn.execute(f"SELECT min(created_at)::date FROM {SOURCE_TABLE}").fetchone()[0]
    days = [first + timedelta(days=7 * i + 1) for i in range(exports)]
    bodies = [{"definition": DEFINITION, "params": {"since": str(d), "until": str(d)}, "batch_size": BATCH_SIZE_MAX}
              for d in days]  # fmt: skip
    with stack.client("analyst") as analyst:
        auth = {"Authorization": analyst.headers["Authorization"]}

    def client() -> httpx.Client:
        return httpx.Client(base_url=stack.base_url, headers=auth, timeout=120)

    posted = run_concurrently(client, lambda c, body: c.post("/exports/v1/transactions", json=body), bodies, exports)
    refused = [t.answer.text[:200] for t in posted if t.answer.status_code != 202]
    if refused:
        raise BenchError(f"{len(refused)} of {exports} concurrent requests were refused: {refused[0]}")
    ids = [str(t.answer.json()["id"]) for t in posted]
    polled = run_concurrently(
        client, lambda c, i: c.get(f"/exports/v1/transactions/{ids[i % exports]}"), range(API_POLLS), API_POLLERS
    )
    bad = [t.answer.status_code for t in polled if t.answer.status_code != 200]
    if bad:
        raise BenchError(f"{len(bad)} of {API_POLLS} status polls failed: {bad[:5]}")
    deadline = time.perf_counter() + PRODUCT_TIMEOUT_S
    with psycopg.connect(SOURCE_DSN) as conn:
        for tx_id, day in zip(ids, days, strict=True):
            while not (header := store.get(tx_id)).terminal:
                if time.perf_counter() > deadline:
                    raise BenchError(f"{tx_id} did not finish")
                time.sleep(0.5)
            count = conn.execute(f"SELECT count(*) FROM {SOURCE_TABLE} WHERE created_at >= %s::date "
                                 "AND created_at < %s::date + 1", (day, day)).fetchone()[0]  # fmt: skip
            if header.state.value != "SUCCEEDED" or header.result_rows != count:
                raise BenchError(f"{tx_id}: {header.state.value} with {header.result_rows} rows, the source {count}")
    return {
        "exports": exports,
        "post": latency_summary(posted),
        "status": {**latency_summary(polled), "threads": API_POLLERS},
    }


def run_product(expected_rows: int, batch_size: int, port: int, api_exports: int = API_EXPORTS) -> Result:
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from export_tx.devstack import AirflowStack, StackError
    from export_tx.states import State
    from export_tx.store import HeaderStore

    home = Path(tempfile.mkdtemp(prefix="bench-export-airflow-"))
    store_url = f"sqlite:///{home}/store.db"
    stack = AirflowStack(
        home,
        port=port,
        extra_env={
            "AIRFLOW_CONN_EXPORT_SOURCE_PG": SOURCE_DSN,
            "EXPORT_TX_STORE_URL": store_url,
            "EXPORT_TX_STORAGE_URI": f"file://{home}/exports",
        },
    )
    stack_pids: set[int] = set()
    succeeded = False
    try:
        step(f"starting an Airflow stack in {home} on port {port}")
        t0 = time.perf_counter()
        stack.migrate()
        stack.start()
        stack.wait_ready(timeout=300)
        leaders = set(stack.running_pids().values())
        time.sleep(3)  # let the components finish their start-up work before timing
        print(f"    ready in {time.perf_counter() - t0:.1f} s", flush=True)

        sampler = StackSampler(leaders)
        idle_total = sampler.sample()
        sampler.peak_total = 0
        store = HeaderStore(store_url)
        conf = {"definition": DEFINITION, "params": {}, "batch_size": batch_size}
        step(f"triggering {json.dumps(conf)} through the REST API")
        with stack.client("admin") as client:
            sampler.start()
            started = time.perf_counter()
            try:
                run_id = str(stack.trigger(client, conf)["dag_run_id"])
                header, wall = wait_header(client, store, run_id, started)
            finally:
                sampler.stop()
                stack_pids = set(sampler.seen)
        others_after = other_airflow_processes(exclude=stack_pids | leaders)
        if header.state != State.SUCCEEDED:
            raise BenchError(f"the product's export ended {header.state.value}: {header.error}")
        if header.result_rows != expected_rows:
            raise BenchError(f"the product exported {header.result_rows} rows, the source holds {expected_rows:,}")
        assert header.result_uri is not None
        result_file = Path(header.result_uri.removeprefix("file://"))
        file_rows = pq.ParquetFile(result_file).metadata.num_rows
        if file_rows != expected_rows:
            raise BenchError(f"the product's file holds {file_rows:,} rows, the source {expected_rows:,}")
        task_peak, task_title = sampler.largest_task()
        batches = store.plan(run_id)
        events = store.events(run_id, limit=1000)
        details: dict[str, Any] = {
            "run_id": run_id,
            "batch_size_requested": batch_size,
            "batches": len(batches),
            "batch_rows": [b.rows for b in batches],
            "batch_durations_s": [round(b.duration_s or 0.0, 3) for b in batches],
            "result_file_bytes": result_file.stat().st_size,
            "idle_stack_rss_bytes": idle_total,
            "largest_task_peak_rss_bytes": task_peak,
            "largest_task_title": task_title,
            "task_processes_seen": len(sampler.task_peaks),
            "rss_samples": sampler.samples,
            "other_airflow_processes_after": others_after,
            "events": [
                {"s": round((e.at - header.created_at).total_seconds(), 3), "kind": e.kind, "message": e.message}
                for e in events
            ],
        }
        if api_exports:
            step(f"API load: {api_exports} exports requested at once, {API_POLLS} status polls from "
                 f"{API_POLLERS} threads")  # fmt: skip
            details["api_load"] = run_api_load(stack, store, api_exports)
        succeeded = True
        return Result(
            contender="product",
            wall_s=wall,
            rows=int(header.result_rows),
            file_bytes=int(header.result_bytes or 0),
            peak_rss_bytes=sampler.peak_total,
            details=details,
        )
    except (StackError, sa.exc.SQLAlchemyError) as exc:
        raise BenchError(f"the product run failed: {exc}") from exc
    finally:
        stop_stack(stack, stack_pids)
        if not succeeded and (home / "logs").is_dir():
            kept = RESULTS_FILE.parent / f"failed-{time.strftime('%Y%m%d-%H%M%S')}-logs"
            shutil.copytree(home / "logs", kept, dirs_exist_ok=True)
            print(f"    the stack's logs were kept in {kept}", file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)


def wait_header(client: Any, store: Any, run_id: str, started: float) -> tuple[Any, float]:
    """Poll the transaction header until it is terminal; return it and the seconds since ``started``."""
    import sqlalchemy as sa

    deadline = started + PRODUCT_TIMEOUT_S
    run_ended_at: float | None = None
    next_run_check = 0.0
    while time.perf_counter() < deadline:
        try:
            header = store.find(run_id)
        except sa.exc.OperationalError:  # the first task has not created the store's tables yet
            header = None
        if header is not None and header.terminal:
            return header, time.perf_counter() - started
        now = time.perf_counter()
        if now >= next_run_check:  # a run that fails before its header exists must not hang us
            next_run_check = now + 2
            state = client.get(f"/api/v2/dags/export_transaction/dagRuns/{run_id}").json().get("state")
            if state in ("success", "failed"):
                run_ended_at = run_ended_at or now
                if now - run_ended_at > 10:
                    what = header.state.value if header is not None else "never created"
                    raise BenchError(f"the DAG run ended {state} but the header is {what}")
        time.sleep(SAMPLE_SECONDS)
    raise BenchError(f"the product's export did not finish within {PRODUCT_TIMEOUT_S:.0f} s")


def stop_stack(stack: Any, seen: set[int]) -> None:
    """Stop the components' groups, then any process of this stack that outlived them (task
    processes run in process groups of their own)."""
    import psutil

    stack.stop()
    for pid in seen:
        try:
            proc = psutil.Process(pid)
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.NoSuchProcess:
            continue


# -- source, machine, report ----------------------------------------------------------------


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def source_count() -> int | None:
    import psycopg

    with psycopg.connect(SOURCE_DSN, autocommit=True) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM {SOURCE_TABLE}").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return int(row[0]) if row else None


def prepare_source(rows: int) -> tuple[int, bool]:
    """Create the database and the table (unless it holds exactly ``rows``); return the count and
    whether the table was reused."""
    import psycopg
    from psycopg import sql

    from export_tx.demo import generate_orders_pg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    if source_count() == rows:
        return rows, True
    started = time.perf_counter()
    generate_orders_pg(SOURCE_DSN, rows, SOURCE_TABLE)
    with psycopg.connect(SOURCE_DSN, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {SOURCE_TABLE}")  # set hint bits now, not in the first contender
    print(f"    generated in {time.perf_counter() - started:.1f} s", flush=True)
    count = source_count()
    if count != rows:
        raise BenchError(f"generated {rows:,} rows but {SOURCE_TABLE} holds {count}")
    return count, False


def machine() -> dict[str, Any]:
    import pandas
    import pyarrow

    cpu = "unknown"
    memory_kb = 0
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    try:
        from importlib.metadata import version

        airflow_version = version("apache-airflow")
    except Exception:
        airflow_version = "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "airflow": airflow_version,
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
    }


def ratio(wall: float, reference: float) -> str:
    r = wall / reference
    if round(r, 2) == 1.0:
        return "1.00x"
    return f"{r:.2f}x slower" if r > 1 else f"{1 / r:.2f}x faster"


def phases(events: list[dict[str, Any]], wall_s: float | None = None) -> list[tuple[str, float]]:
    """The product's timeline from its own processing log (seconds since the header was created):
    planning, the batch phase, the gap before the merge, the merge — and, given the measured wall
    time, what came before the first task created the header (scheduling and task start-up)."""

    def first(test: Any) -> float | None:
        return next((e["s"] for e in events if test(e)), None)

    def last(test: Any) -> float | None:
        found = [e["s"] for e in events if test(e)]
        return found[-1] if found else None

    running = first(lambda e: e["message"].startswith("RUNNING"))
    planned = first(lambda e: e["message"].startswith("planned "))
    batches_done = last(lambda e: e["kind"] == "batch")
    merging = first(lambda e: e["message"].startswith("MERGING"))
    succeeded = first(lambda e: e["message"].startswith("SUCCEEDED"))
    before = None if wall_s is None or succeeded is None else max(wall_s - succeeded, 0.0)
    marks = [("trigger → first task", 0.0, before), ("planning", running, planned),
             ("batches (to the last one done)", planned, batches_done), ("gap before the merge", batches_done, merging),
             ("merge", merging, succeeded)]  # fmt: skip
    return [(name, round(end - start, 3)) for name, start, end in marks if start is not None and end is not None]


def print_table(results: list[Result]) -> None:
    reference = next(r for r in results if r.contender == REFERENCE)
    header = f"{'contender':<44} {'wall s':>8} {'rows/s':>11} {'peak RSS MB':>12} {'file MB':>8}  vs {REFERENCE}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{LABELS[r.contender]:<44} {r.wall_s:>8.2f} {r.rows_per_s:>11,.0f} {r.peak_rss_bytes / MB:>12,.1f} "
            f"{r.file_bytes / MB:>8.1f}  {ratio(r.wall_s, reference.wall_s)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS") or DEFAULT_ROWS))
    parser.add_argument("--batch-size", type=int, default=int(os.environ.get("BENCH_BATCH_SIZE") or 0) or None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT") or DEFAULT_PORT))
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=float(os.environ.get("BENCH_WAIT_QUIET") or 600),
        help="seconds to wait, before each contender, for other Airflow processes on this machine to end",
    )
    parser.add_argument(
        "--api-exports",
        type=int,
        default=int(os.environ.get("BENCH_API_EXPORTS") or API_EXPORTS),
        help="small exports requested at once after the product's run, to time POST and status (0: skip)",
    )
    parser.add_argument("--baseline", choices=BASELINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        return baseline_child(args.baseline)

    from export_tx.settings import BATCH_SIZE_MAX, BATCH_SIZE_MIN

    rows: int = args.rows
    batch_size: int = args.batch_size or min(max(math.ceil(rows / 4), BATCH_SIZE_MIN), BATCH_SIZE_MAX)
    info = machine()
    print(f"machine: {info['nproc']} cores ({info['cpu_model']}), {info['memory_gb']} GB RAM")
    print(f"rows: {rows:,}   product batch_size: {batch_size:,}")

    step(f"source: {SOURCE_TABLE} in {SOURCE_DSN}")
    count, reused = prepare_source(rows)
    print(f"    {'reused the existing table' if reused else 'generated'}: {count:,} rows", flush=True)

    results: list[Result] = []
    disturbed: list[str] = []
    try:
        for kind in (*BASELINES, "product"):
            step(LABELS[kind] + (" (subprocess)" if kind in BASELINES else ""))
            others = wait_until_quiet(args.wait_quiet)
            if others:
                disturbed.append(kind)
                print(f"    WARNING: {len(others)} other Airflow processes are running; figures will be disturbed")
            load = os.getloadavg()[0]
            if kind == "product":
                result = run_product(count, batch_size, free_port(args.port), args.api_exports)
            else:
                result = run_baseline(kind, count)
            if kind in BASELINES:
                result.details["other_airflow_processes_after"] = other_airflow_processes()
            result.details.update({"load_1min_before": load, "other_airflow_processes_before": others})
            if result.details["other_airflow_processes_after"] and kind not in disturbed:
                disturbed.append(kind)
                print("    WARNING: other Airflow processes started during this measurement")
            results.append(result)
            print(f"    {result.wall_s:.2f} s", flush=True)
    except BenchError as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        return 1

    product = results[-1].details
    print()
    print(f"machine: nproc {info['nproc']}, {info['cpu_model']}; rows: {count:,}")
    print_table(results)
    print(
        f"product: {product['batches']} batches of ~{batch_size:,} rows; peak RSS is the sum over all stack "
        f"processes (idle before the trigger: {product['idle_stack_rss_bytes'] / MB:,.1f} MB); "
        f"largest single task process: {product['largest_task_peak_rss_bytes'] / MB:,.1f} MB"
    )

    timeline = phases(product.get("events", []), results[-1].wall_s)
    if timeline:
        print("product timeline (from its processing log): " + ", ".join(f"{n} {t:.2f} s" for n, t in timeline))
        product["phases_s"] = dict(timeline)
    load = product.get("api_load")
    if load:
        post, poll = load["post"], load["status"]
        print(f"/exports API under load ({load['exports']} exports requested at once, all exact):")
        for label, figures in (("POST /exports/v1/transactions", post), ("GET  /exports/v1/transactions/{id}", poll)):
            print(f"  {label:<36} n={figures['n']:<4} p50 {figures['p50_ms']:8.1f} ms   "
                  f"p99 {figures['p99_ms']:8.1f} ms   max {figures['max_ms']:8.1f} ms")  # fmt: skip
        print(f"  (status polls from {poll['threads']} threads while the exports ran)")

    reference = next(r for r in results if r.contender == REFERENCE)
    if disturbed:
        print(f"WARNING: other Airflow processes ran during {', '.join(disturbed)}; rerun on a quiet machine")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "rows": count,
        "source_reused": reused,
        "batch_size": batch_size,
        "reference": REFERENCE,
        "results": [
            {
                **asdict(r),
                "label": LABELS[r.contender],
                "rows_per_s": r.rows_per_s,
                "vs_reference": r.wall_s / reference.wall_s,
            }
            for r in results
        ],
    }
    RESULTS_FILE.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results: {RESULTS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
