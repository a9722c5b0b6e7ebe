"""The single-process baselines: each runs in a subprocess of its own and prints one JSON line.

* **naive**: ``pandas.read_sql`` (SQLAlchemy + psycopg 3), e-mails masked with ``Series.str.replace``
  (the definition's regex), ``DataFrame.to_parquet`` with pandas' defaults (snappy).
* **adbc**: the ADBC PostgreSQL driver streams record batches (COPY) into a ``ParquetWriter``.
* **connectorx**: ``connectorx.read_sql(..., return_type="arrow", partition_on="order_id",
  partition_num=<cores>)`` reads the whole result in parallel into one Arrow table (materialised:
  its peak memory grows with the table), then writes it like adbc.

adbc and connectorx do the product's per-row work: each batch conformed to the types the product
derives from the table (``amount`` as decimal128(12,2), UTC timestamps) and masked by the
definition's own transform, written with zstd in ~1M-row row groups.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchError, Result

SOURCE_TABLE = "orders"
DEFINITION = "orders"
BASELINES = ("naive", "adbc", "connectorx")
#: Measured: pandas needed 7.9 GB for 5,000,000 rows (the estimate that decides whether naive runs).
NAIVE_BYTES_PER_ROW = 7.9e9 / 5_000_000


def source_query() -> str:
    """What the ``orders`` definition selects with every param unset, in key order.

    With its params unset the definition's WHERE clause is always true, so this plain query
    returns the same rows. It binds no parameters on purpose: given bound parameters the ADBC
    PostgreSQL driver cannot use COPY and materialises the whole result (libpq ``PGresult`` plus
    one Arrow batch) before returning a single batch, which is not the best a single process can do.
    """
    from export_tx.catalog import registry

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


# -- the baselines (run in the child) -------------------------------------------------------


def run_naive(out: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        frame = pd.read_sql(sa.text(source_query()), engine)
    finally:
        engine.dispose()
    # Same masking as the definition's transform: ana.lopez@example.com -> a***@example.com.
    frame["customer_email"] = frame["customer_email"].str.replace(r"^([^@])[^@]*@", r"\1***@", regex=True)
    frame.to_parquet(out)
    return len(frame), {}


def write_conformed(out: Path, batches: Iterable[Any]) -> int:
    """Conform and mask every batch as the product does; write them with the product's writer."""
    from export_tx.columns.conversions import conform
    from export_tx.definitions.orders import mask_email
    from export_tx.formats.parquet import write_parquet

    schema = orders_schema()
    # The product's own writer: the same row groups and compression, so only the reading differs.
    conformed = (mask_email(conform(batch, schema)) for batch in batches if batch.num_rows)
    with out.open("wb") as sink:
        return write_parquet(sink, schema, conformed)


def run_adbc(out: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    import adbc_driver_postgresql.dbapi as pg_dbapi

    with pg_dbapi.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(source_query())
        return write_conformed(out, cur.fetch_record_batch()), {}


def run_connectorx(out: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    import connectorx as cx

    partitions = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    table = cx.read_sql(dsn, source_query(), return_type="arrow", partition_on="order_id", partition_num=partitions)
    read_s = time.perf_counter() - started
    after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = write_conformed(out, table.to_batches())
    extra = {"partitions": partitions, "read_s": round(read_s, 3), "peak_rss_after_read_bytes": after_read,
             "arrow_table_bytes": int(table.nbytes)}  # fmt: skip
    return rows, extra


RUNNERS: dict[str, Callable[[Path, str], tuple[int, dict[str, Any]]]] = {
    "naive": run_naive,
    "adbc": run_adbc,
    "connectorx": run_connectorx,
}


def baseline_child(kind: str, dsn: str) -> int:
    """Run one baseline in this process; print one JSON line with its figures."""
    import pyarrow.parquet as pq

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-export-{kind}-"))
    try:
        out = workdir / "orders.parquet"
        started = time.perf_counter()
        rows, extra = RUNNERS[kind](out, dsn)
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
            "extra": extra,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report), flush=True)
    return 0


# -- the parent's side ----------------------------------------------------------------------


def run_baseline(kind: str, dsn: str, expected_rows: int) -> Result:
    """Run ``kind`` in a fresh interpreter; its rows and the file's must equal the source's."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_export", "--baseline", kind, "--dsn", dsn],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
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
        details={
            "row_groups": report["row_groups"],
            "process_wall_s": round(process_wall, 3),
            "peak_rss_bytes_per_row": round(int(report["peak_rss_bytes"]) / expected_rows, 1)
            if expected_rows
            else None,
            **report["extra"],
        },  # fmt: skip
    )


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def naive_fits(rows: int, bytes_per_row: float) -> tuple[bool, dict[str, Any]]:
    """Whether pandas' estimated peak (rows × bytes/row) stays within half of MemAvailable."""
    estimate = rows * bytes_per_row
    available = mem_available_bytes()
    figures = {"estimated_peak_bytes": int(estimate), "bytes_per_row": round(bytes_per_row, 1),
               "mem_available_bytes": available}  # fmt: skip
    return estimate <= available / 2, figures
