"""The product through a real Airflow stack: one fresh stack per source size.

Per stack: the big export (every row of that size's ``orders``; REST trigger → header SUCCEEDED,
every process sampled), optionally the ~10,000-row export three times (latency), optionally the
API load (see :data:`LOAD_MODEL`). Every export is checked: SUCCEEDED, with exactly the rows the
source holds for its parameters.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.api_load import Fleet, Poll, one_after_another, seconds_summary
from bench.baselines import DEFINITION, SOURCE_TABLE
from bench.common import MB, RESULTS_DIR, BenchError, Result, note, step
from bench.probe import (
    StackSampler,
    other_airflow_processes,
    stop_stack,
    task_instances,
)
from bench.task_memory import merge_window, reported_batch_peaks, task_memory

DAG_ID = "export_transaction"
PRODUCT_TIMEOUT_S = 3600.0
HEADER_POLL_S = 0.1
SMALL_EXPORT_ROWS = 10_000
SMALL_EXPORT_RUNS = 3
POLL_PERIOD_S = 1.0
POLL_AT_LEAST_S = 20.0
#: Airflow's own route polled beside the status pollers (authenticated, no database): the
#: api-server's floor under the same load.
REFERENCE_PATH = "/api/v2/version"
REFERENCE_POLLERS = 5
#: The API load's clients run in this many processes of their own (see bench.api_load.Fleet).
CLIENT_PROCESSES = 10
#: Requests of one client alone after the load, for the quiet machine's latency.
QUIET_REQUESTS = 200
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
#: The status target's own load: this many pollers follow one export (the stack's whole table,
#: as the big export), ``WATCHED_EXPORTS`` times one after the other; see :data:`WATCH_MODEL`.
WATCHERS = 50
WATCHED_EXPORTS = 3
WATCH_MODEL = (
    "{n} pollers (threads of {p} client processes, one client each, connected before) poll the status of one export of "
    "all {rows:,} rows once a second each (the first poll at a random moment of the first second) until "
    "it is terminal; {k} such exports, one after the other, each requested through POST /exports/v1/transactions"
)
LOAD_MODEL = (
    "POST: {n} exports (one day of orders each) requested at once by {n} clients (threads of {p} "
    "client processes). Status: right after, {n} pollers, one per transaction and one client each (connected "
    "before), poll their own "
    "GET /exports/v1/transactions/{{id}} once a second (the first poll at a random moment of the first "
    "second) while the {n} exports run, until their transaction is terminal and at least 20 s have passed. "
    "(The POST answers Retry-After: 5; polling every second is five times what it asks.)"
)


@dataclass(frozen=True)
class Source:
    rows: int
    database: str
    dsn: str


@dataclass(frozen=True)
class ProductOptions:
    port: int
    batch_size: int | None
    api_exports: int
    small_export: bool
    #: Where Airflow's metadata and the header store live: "sqlite" (the embedded default, files
    #: in the stack's folder) or "postgresql" (production's: fresh databases on the source's server).
    databases: str = "sqlite"
    #: api-server worker processes (``[api] workers``; see the README's "Running it fast").
    api_workers: int = 1


# -- the whole stack's life ------------------------------------------------------------------


def run_product(source: Source, options: ProductOptions) -> Result:
    if options.databases == "sqlite":
        return _run_product(source, options, {})
    from devtools.databases import fresh_database

    with (
        fresh_database(source.dsn, "export_tx_bench_meta") as meta,
        fresh_database(source.dsn, "export_tx_bench_store") as store,
    ):
        return _run_product(source, options, {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://" + meta.split("://", 1)[1],
            "EXPORT_TX_STORE_URL": "postgresql+psycopg://" + store.split("://", 1)[1],
        })  # fmt: skip


def _run_product(source: Source, options: ProductOptions, databases: dict[str, str]) -> Result:
    import httpx
    import sqlalchemy as sa

    from devtools.stack import AirflowStack, StackError
    from export_tx.store import HeaderStore

    home = Path(tempfile.mkdtemp(prefix=f"bench-export-airflow-{source.rows}-"))
    store_url = databases.get("EXPORT_TX_STORE_URL") or f"sqlite:///{home}/store.db"
    stack = AirflowStack(home, port=options.port, api_workers=options.api_workers, extra_env={
        "AIRFLOW_CONN_EXPORT_SOURCE_PG": source.dsn,
        "EXPORT_TX_STORE_URL": store_url,
        "EXPORT_TX_STORAGE_URI": f"file://{home}/exports",
        # Housekeeping's first run would start with the stack, inside the timed export.
        "EXPORT_TX_HOUSEKEEPING_SCHEDULE": "none",
        **databases,
    })  # fmt: skip
    sampler: StackSampler | None = None
    succeeded = False
    try:
        step(f"starting an Airflow stack in {home} on port {options.port} (source: {source.database})")
        t0 = time.perf_counter()
        stack.migrate()
        stack.start()
        stack.wait_ready(timeout=300)
        leaders = set(stack.running_pids().values())
        time.sleep(3)  # let the components finish their start-up work before timing
        note(f"ready in {time.perf_counter() - t0:.1f} s")
        sampler = StackSampler(leaders)
        store = HeaderStore(store_url)
        store.ensure_schema()
        warm_up(stack, store, source, options.api_workers)
        result = big_export(stack, store, sampler, source, options.batch_size)
        result.details.update({"databases": options.databases, "api_workers": options.api_workers})
        if options.small_export:
            step(f"a ~{SMALL_EXPORT_ROWS:,}-row export, {SMALL_EXPORT_RUNS} times: POST → SUCCEEDED")
            result.details["small_export"] = watched(stack, lambda: small_exports(stack, store, source))
        if options.api_exports:
            step(f"status reads: {WATCHERS} pollers on one export of {source.rows:,} rows, {WATCHED_EXPORTS} times")
            result.details["watched_export"] = watched(stack, lambda: watch_exports(stack, store, source))
            step(f"API load: {options.api_exports} exports requested at once, then {options.api_exports} "
                 f"pollers (one a second each) while they run")  # fmt: skip
            result.details["api_load"] = watched(stack, lambda: run_api_load(stack, store, source, options.api_exports))
        succeeded = True
        return result
    except (StackError, sa.exc.SQLAlchemyError, httpx.HTTPError) as exc:
        raise BenchError(f"the product run failed: {type(exc).__name__}: {exc}") from exc
    finally:
        stop_stack(stack, sampler.seen if sampler else {})
        if not succeeded and (home / "logs").is_dir():
            kept = RESULTS_DIR / f"failed-{time.strftime('%Y%m%d-%H%M%S')}-logs"
            shutil.copytree(home / "logs", kept, dirs_exist_ok=True)
            print(f"    the stack's logs were kept in {kept}", file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)


def watched(stack: Any, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``'s figures, with the other Airflow processes running before or after it."""
    groups = set(stack.running_pids().values())
    before = other_airflow_processes(stack_home=stack.home, groups=groups)
    figures = measure()
    others = sorted({*before, *other_airflow_processes(stack_home=stack.home, groups=groups)})
    if others:
        note(f"WARNING: {len(others)} other Airflow processes ran around this measurement; it may be disturbed")
    return {**figures, "other_airflow_processes": others}


# -- the big export --------------------------------------------------------------------------


def warm_up(stack: Any, store: Any, source: Source, api_workers: int) -> None:
    """One small export, untimed, before anything is timed: a deployment serves exports all day,
    and the first task a fresh scheduler runs pays one-time costs (its executor's first worker,
    first DAG deserialisations; about 3 s here) that no later export pays."""
    engine = source_engine(source.dsn)
    try:
        with engine.connect() as conn:
            day = first_full_day(conn)
            params = {"since": str(day), "until": str(day)}
            rows = definition_count(conn, params)
    finally:
        engine.dispose()
    step(f"warming the stack up: one untimed export of {rows:,} rows")
    with stack.client("admin") as client:
        started = time.perf_counter()
        run_id = str(stack.trigger(client, {"definition": DEFINITION, "params": params})["dag_run_id"])
        header, wall = wait_header(client, store, run_id, started)
        check_header(header, rows, "the warm-up export")
        note(f"{wall:.2f} s")
        wait_idle(client, run_id)
    warm_api_workers(stack, api_workers)


def dag_run(client: Any, run_id: str) -> dict[str, Any]:
    """The export DAG's run ``run_id`` as Airflow's REST API describes it."""
    return dict(client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}").json())


#: Task instance states in which a task holds a slot or is about to (deferred ones wait in the triggerer).
BUSY_STATES = ("scheduled", "queued", "running", "restarting", "up_for_retry", "up_for_reschedule")


def wait_idle(client: Any, run_id: str, timeout: float = 120.0) -> None:
    """Until ``run_id`` has ended and no task of any run holds or waits for a slot: an export's
    header is SUCCEEDED before its run's last tasks (finalize, the notification's request) have
    run, and those would otherwise start beside the next timed export."""
    deadline = time.monotonic() + timeout
    while True:
        run = dag_run(client, run_id)
        busy = client.get("/api/v2/dags/~/dagRuns/~/taskInstances",
                          params={"state": list(BUSY_STATES), "limit": 1}).json()  # fmt: skip
        if run.get("state") in ("success", "failed") and busy.get("total_entries", 1) == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the stack was not idle {timeout:.0f} s after {run_id} (its run {run.get('state')})")
        time.sleep(0.2)


def warm_api_workers(stack: Any, count: int, timeout: float = 120.0) -> None:
    """Every api-server worker process answers ``/exports`` before anything is timed: each starts
    its run maker (a child process, ~2 s of CPU) at its first ``/exports`` request, which a
    deployment serving exports all day has long done. Requests at once, from fresh connections,
    until each worker has its child (the kernel hands connections to whichever worker accepts)."""
    import httpx
    import psutil

    from bench.api_load import run_concurrently

    leader = psutil.Process(stack.running_pids()["api-server"])

    def spawned(proc: psutil.Process) -> list[psutil.Process]:
        return [c for c in proc.children() if any("spawn_main" in part for part in c.cmdline())]

    with stack.client("analyst") as analyst:
        auth = {"Authorization": analyst.headers["Authorization"]}
    deadline = time.monotonic() + timeout
    while True:
        workers = spawned(leader) if count > 1 else [leader]
        if len(workers) >= count and all(spawned(w) for w in workers):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"not every api-server worker started its run maker within {timeout:.0f} s")
        calls = 8 * count
        answers = run_concurrently(lambda: httpx.Client(base_url=stack.base_url, headers=auth, timeout=60),
                                   lambda c, _: c.get("/exports/v1/me"), range(calls), calls)  # fmt: skip
        if any(a.answer.status_code != 200 for a in answers):
            raise BenchError("GET /exports/v1/me failed while warming the api-server's workers up")
        time.sleep(1.0)


def big_export(stack: Any, store: Any, sampler: StackSampler, source: Source, batch_size: int | None) -> Result:
    """Every row of the source; timed from just before the REST trigger to the header SUCCEEDED."""
    import pyarrow.parquet as pq

    idle_total = sampler.sample()
    sampler.peak_total = 0
    conf: dict[str, Any] = {"definition": DEFINITION, "params": {}}
    if batch_size:
        conf["batch_size"] = batch_size
    step(f"triggering {json.dumps(conf)} through the REST API")
    with stack.client("admin") as client:
        sampler.start()
        started, triggered_at = time.perf_counter(), time.time()
        try:
            run_id = str(stack.trigger(client, conf)["dag_run_id"])
            header, wall = wait_header(client, store, run_id, started)
        finally:
            sampler.stop()
        tis = task_instances(client, DAG_ID, run_id)
        run = dag_run(client, run_id)
        if any(proc.ti_id not in tis for proc in sampler.tasks.values()):  # tasks of other runs or DAGs
            tis = {**task_instances(client, "~", "~"), **tis}
    others_after = other_airflow_processes(set(sampler.seen) | sampler.leaders, stack.home, sampler.leaders)
    check_header(header, source.rows, "the product's export")
    assert header.result_uri is not None
    result_file = Path(header.result_uri.removeprefix("file://"))
    file_rows = pq.ParquetFile(result_file).metadata.num_rows
    if file_rows != source.rows:
        raise BenchError(f"the product's file holds {file_rows:,} rows, the source {source.rows:,}")
    batches = store.plan(run_id)
    events = store.events(run_id, limit=1000)
    note(f"SUCCEEDED in {wall:.2f} s: {header.result_rows:,} rows in {len(batches)} batch(es)")
    details: dict[str, Any] = {
        "run_id": run_id,
        "batch_size_requested": batch_size,
        "batch_size_used": header.batch_size,
        "batches": len(batches),
        "batch_rows": [b.rows for b in batches],
        "batch_durations_s": [round(b.duration_s or 0.0, 3) for b in batches],
        "result_file_bytes": result_file.stat().st_size,
        "idle_stack_rss_bytes": idle_total,
        "rss_samples": sampler.samples,
        "other_airflow_processes_after": others_after,
        "first_task": first_task(triggered_at, run, tis, header.created_at),
        "events": [
            {"s": round((e.at - header.created_at).total_seconds(), 3), "kind": e.kind, "message": e.message}
            for e in events
        ],
        **task_memory(
            sampler.tasks,
            tis,
            run_id,
            [b.batch_no for b in batches],
            [int(b.rows or 0) for b in batches],
            merge_window(events),
            reported_batch_peaks(events),
        ),  # fmt: skip
    }
    return Result("product", wall, int(header.result_rows), int(header.result_bytes or 0), sampler.peak_total, details)


def first_task(
    triggered_at: float, dag_run: dict[str, Any], tis: dict[str, dict[str, Any]], created: Any
) -> dict[str, Any]:
    """Where the time before the first task's work went, in seconds since the REST trigger was sent
    (Airflow's own timestamps of the run and of its first task instance; the header's creation is
    the first thing that task does)."""
    from datetime import datetime

    def since(stamp: Any) -> float | None:
        if not stamp:
            return None
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        return round(when.timestamp() - triggered_at, 3)

    ours = [ti for ti in tis.values() if ti.get("dag_run_id") == dag_run.get("dag_run_id")]
    first = next((ti for ti in ours if ti.get("task_id") == "begin_transaction"), {})
    return {
        "run_queued_s": since(dag_run.get("queued_at")),
        "run_started_s": since(dag_run.get("start_date")),
        "task_scheduled_s": since(first.get("scheduled_when")),
        "task_queued_s": since(first.get("queued_when")),
        "task_started_s": since(first.get("start_date")),
        "header_created_s": since(created),
    }


def check_header(header: Any, expected_rows: int, what: str) -> None:
    if header.state.value != "SUCCEEDED":
        raise BenchError(f"{what} ({header.id}) ended {header.state.value}: {header.error}")
    if header.result_rows != expected_rows:
        raise BenchError(f"{what} ({header.id}) exported {header.result_rows} rows, the source holds {expected_rows:,}")


def wait_header(
    client: Any, store: Any, run_id: str, started: float, interval: float = HEADER_POLL_S
) -> tuple[Any, float]:
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
            state = dag_run(client, run_id).get("state")
            if state in ("success", "failed"):
                run_ended_at = run_ended_at or now
                if now - run_ended_at > 10:
                    what = header.state.value if header is not None else "never created"
                    raise BenchError(f"the DAG run ended {state} but the header is {what}")
        time.sleep(interval)
    raise BenchError(f"the product's export did not finish within {PRODUCT_TIMEOUT_S:.0f} s")


# -- counting what an export must hold -------------------------------------------------------


def definition_count(conn: Any, params: dict[str, Any]) -> int:
    """Rows the ``orders`` definition's own SQL selects for ``params`` (what an export must hold)."""
    import sqlalchemy as sa

    from export_tx.catalog import registry

    definition = registry.get(DEFINITION)
    query = sa.text(f"SELECT count(*) FROM ({definition.sql}) AS q")
    return int(conn.execute(query, definition.bind_values(params)).scalar_one())


def source_engine(dsn: str) -> Any:
    import sqlalchemy as sa

    return sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))


def first_full_day(conn: Any) -> date:
    import sqlalchemy as sa

    first = conn.execute(sa.text(f"SELECT min(created_at)::date FROM {SOURCE_TABLE}")).scalar_one()
    return first + timedelta(days=1)


def window_counts(conn: Any, since: date, days: int) -> dict[str | None, int]:
    """Rows of ``days`` days from ``since``: in all (key None) and per status."""
    import sqlalchemy as sa

    from export_tx.catalog import registry

    definition = registry.get(DEFINITION)
    params = {"since": str(since), "until": str(since + timedelta(days=days - 1))}
    query = sa.text(f"SELECT status, count(*) FROM ({definition.sql}) AS q GROUP BY status")
    found: dict[str | None, int] = {str(s): int(n) for s, n in conn.execute(query, definition.bind_values(params))}
    found[None] = sum(found.values())
    return found


def small_export_params(conn: Any, target: int = SMALL_EXPORT_ROWS) -> tuple[dict[str, str], int]:
    """The definition's params (a window of whole days, a status if one day holds too many)
    selecting the count nearest ``target``; and that exact count."""
    since = first_full_day(conn)
    per_day = max(window_counts(conn, since, 1)[None], 1)
    guess = max(1, round(target / per_day))
    options: list[tuple[int, int, str | None]] = []
    for days in sorted({max(1, guess - 1), guess, guess + 1}):
        for status, count in window_counts(conn, since, days).items():
            options.append((count, days, status))
    count, days, status = min(options, key=lambda o: (abs(o[0] - target), o[2] is not None))
    params = {"since": str(since), "until": str(since + timedelta(days=days - 1))}
    if status is not None:
        params["status"] = status
    exact = definition_count(conn, params)
    if exact != count:
        raise BenchError(f"the source changed while choosing the small export: {count} then {exact} rows")
    return params, exact


# -- the ~10,000-row export ------------------------------------------------------------------


def small_exports(stack: Any, store: Any, source: Source) -> dict[str, Any]:
    """The same ~10k-row request, ``SMALL_EXPORT_RUNS`` times one after the other: POST → SUCCEEDED."""
    engine = source_engine(source.dsn)
    try:
        with engine.connect() as conn:
            params, rows = small_export_params(conn)
    finally:
        engine.dispose()
    note(f"params {json.dumps(params)} select {rows:,} rows")
    walls: list[float] = []
    with stack.client("analyst") as analyst:
        for _ in range(SMALL_EXPORT_RUNS):
            started = time.perf_counter()
            answer = analyst.post(
                "/exports/v1/transactions", json={"definition": DEFINITION, "params": params, "force": True}
            )
            if answer.status_code != 202:
                raise BenchError(f"the small export was refused: {answer.status_code} {answer.text[:300]}")
            header, wall = wait_header(analyst, store, str(answer.json()["id"]), started, interval=0.05)
            check_header(header, rows, "the small export")
            walls.append(round(wall, 3))
            note(f"{wall:.2f} s")
    return {"params": params, "rows": rows, "walls_s": walls, "min_s": min(walls),
            "median_s": statistics.median(walls), "source_rows": source.rows}  # fmt: skip


# -- status reads during an export -----------------------------------------------------------


def watch_exports(stack: Any, store: Any, source: Source) -> dict[str, Any]:
    """See :data:`WATCH_MODEL` (the status target's load: "50 concurrent pollers during an
    export"). Every poll must answer 200 for its transaction; every export SUCCEEDED with all rows."""
    with stack.client("analyst") as analyst:
        auth = {"Authorization": analyst.headers["Authorization"]}
        fleet = Fleet(stack.base_url, auth, CLIENT_PROCESSES)
        polls: list[Poll] = []
        walls: list[float] = []
        ids: list[str] = []
        began: list[float] = []

        def start() -> str:  # once the pollers are ready: the export, timed from here
            began.append(time.perf_counter())
            body = {"definition": DEFINITION, "params": {}, "force": True}
            answer = analyst.post("/exports/v1/transactions", json=body)
            if answer.status_code != 202:
                raise BenchError(f"the watched export was refused: {answer.status_code} {answer.text[:300]}")
            return str(answer.json()["id"])

        for _ in range(WATCHED_EXPORTS):
            tx_id, found = fleet.follow_new("/exports/v1/transactions/{}", start, WATCHERS,
                                            terminal_states=TERMINAL_STATES, period=POLL_PERIOD_S,
                                            timeout=PRODUCT_TIMEOUT_S)  # fmt: skip
            ids.append(tx_id)
            header, _ = wait_header(analyst, store, tx_id, began[-1])
            wall = (header.updated_at - header.created_at).total_seconds()  # the pollers ended up to 1 s after
            with stack.client("admin") as admin:  # its run's last tasks must not run beside the next one
                wait_idle(admin, tx_id)
            check_header(header, source.rows, "a watched export")
            check_polls(found)
            polls.extend(found)
            walls.append(round(wall, 3))
            note(f"{wall:.2f} s, {len(found)} polls")
    running = [p.seconds for p in polls if p.state not in TERMINAL_STATES]
    served = server_side_durations(stack.home / "logs" / "api-server.log", ids)["status"]
    return {
        "model": WATCH_MODEL.format(n=WATCHERS, p=CLIENT_PROCESSES, rows=source.rows, k=WATCHED_EXPORTS),
        "pollers": WATCHERS, "exports": WATCHED_EXPORTS, "rows": source.rows, "walls_s": walls,
        "polls": len(polls),
        "while_running": seconds_summary(running) if running else None,
        "server_side": seconds_summary(served) if served else None,
    }  # fmt: skip


# -- the API load ----------------------------------------------------------------------------


def run_api_load(stack: Any, store: Any, source: Source, exports: int) -> dict[str, Any]:
    """See :data:`LOAD_MODEL`. Every answer must be right and every export SUCCEEDED with the rows
    the source holds for its day."""
    import httpx

    engine = source_engine(source.dsn)
    try:
        with engine.connect() as conn:
            first = first_full_day(conn)
            days = [first + timedelta(days=7 * i) for i in range(exports)]
            params = [{"since": str(d), "until": str(d)} for d in days]
            expected = [definition_count(conn, p) for p in params]
    finally:
        engine.dispose()
    with stack.client("analyst") as analyst:
        auth = {"Authorization": analyst.headers["Authorization"]}

    def client() -> httpx.Client:
        return httpx.Client(base_url=stack.base_url, headers=auth, timeout=120)

    bodies = [{"definition": DEFINITION, "params": p} for p in params]
    fleet = Fleet(stack.base_url, auth, CLIENT_PROCESSES)
    posted = fleet.post_at_once("/exports/v1/transactions", bodies)
    refused = [a.text[:200] for a in posted if a.status_code != 202]
    if refused:
        raise BenchError(f"{len(refused)} of {exports} concurrent requests were refused: {refused[0]}")
    ids = [str(a.json()["id"]) for a in posted]
    # Beside the pollers, a few clients poll one of Airflow's own routes through the same
    # api-server: what any request costs there under this load, the product's part aside.
    references = [f"reference-{i}" for i in range(REFERENCE_POLLERS)]
    polls, beside = fleet.poll("/exports/v1/transactions/{}", ids, terminal_states=TERMINAL_STATES,
                               period=POLL_PERIOD_S, at_least=POLL_AT_LEAST_S, timeout=PRODUCT_TIMEOUT_S,
                               beside=(REFERENCE_PATH, references))  # fmt: skip
    check_polls(polls)
    served = server_side_durations(stack.home / "logs" / "api-server.log", ids)
    if any(p.status_code != 200 for p in beside):
        raise BenchError(f"GET {REFERENCE_PATH} failed during the API load")
    # Then, the exports done and the machine quiet again: one client alone, one request at a time.
    with client() as alone:
        paths = {"status": f"/exports/v1/transactions/{ids[0]}", "reference": REFERENCE_PATH}
        quiet = {name: seconds_summary(one_after_another(alone, path, QUIET_REQUESTS)) for name, path in paths.items()}
    for tx_id, count in zip(ids, expected, strict=True):
        check_header(store.get(tx_id), count, "a small export of the API load")
    running = [p for p in polls if p.state not in TERMINAL_STATES]
    return {
        "exports": exports,
        "model": LOAD_MODEL.format(n=exports, p=CLIENT_PROCESSES),
        "rows_each": expected,
        "post": {**seconds_summary([a.seconds for a in posted]), "threads": exports, "processes": CLIENT_PROCESSES},
        "status": {**seconds_summary([p.seconds for p in polls]), "pollers": exports, "period_s": POLL_PERIOD_S,
                   "processes": CLIENT_PROCESSES, "duration_s": max(p.at for p in polls),
                   "polls_while_running": len(running),
                   "while_running": seconds_summary([p.seconds for p in running]) if running else None},
        "reference": {"path": REFERENCE_PATH, "pollers": REFERENCE_POLLERS,
                      "beside_status": seconds_summary([p.seconds for p in beside]),
                      "alone_after": quiet, "alone_requests": QUIET_REQUESTS},
        "server_side": {name: seconds_summary(values) if values else None for name, values in served.items()},
    }  # fmt: skip


#: Airflow's access log line for each answered request (``[http.access]``, in the api-server's log).
ACCESS_LINE = re.compile(r"\[http\.access\].* duration_us=(\d+) .*method=(\w+) path=(\S+)")


def server_side_durations(log: Path, tx_ids: list[str]) -> dict[str, list[float]]:
    """How long the api-server took over each POST and each status GET of the load, as its own
    access log says (from the request reaching Airflow's middleware to the answer sent): the part
    of the latency that is the server's, not the client's or the machine's scheduling of either."""
    ids = set(tx_ids)
    found: dict[str, list[float]] = {"post": [], "status": []}
    prefix = "/exports/v1/transactions"
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        match = ACCESS_LINE.search(line)
        if match is None:
            continue
        seconds, method, path = int(match.group(1)) / 1e6, match.group(2), match.group(3)
        if method == "POST" and path == prefix:
            found["post"].append(seconds)
        elif method == "GET" and path.startswith(prefix + "/") and path[len(prefix) + 1 :] in ids:
            found["status"].append(seconds)
    found["post"] = found["post"][-len(tx_ids) :]  # the burst's: the last (the ~10k-row exports were POSTed before)
    return found


def check_polls(polls: list[Poll]) -> None:
    bad = [f"{p.status_code} {p.tx_id}" for p in polls if p.status_code != 200 or p.answered_id != p.tx_id]
    if bad:
        raise BenchError(f"{len(bad)} of {len(polls)} status polls failed or answered for another id: {bad[:5]}")


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:,.1f} MB"
