"""What a definition's transform costs: the same rows written to Parquet with no transform, with the
``orders`` definition's Arrow e-mail mask, and with the same mask as a pandas transform.

    .venv/bin/python -m bench.transform_cost [--rows 1000000] [--batch-rows 100000] [--repeat 3]

The rows (the ``orders`` shape and types as PostgreSQL hands them to the product: ``numeric(12,2)``
→ decimal128(12, 2), ``timestamptz`` → timestamp[us, UTC], 10 % NULL notes) are generated in this
process as Arrow record batches before any timing, so the figures hold the transform and the
write only, not a database. Each variant goes through the product's own code: the per-batch
transform of :func:`export_tx.columns.conversions.batch_transform` (the pandas one with its checks
against the output schema) into :func:`export_tx.formats.parquet.write_parquet` (zstd) on a local
file. Wall time is the best of ``--repeat`` runs (every run is in the JSON); the ratio is pandas'
wall time over the Arrow transform's. Both masked files must hold equal tables (else it aborts).
Results: printed, and written to ``bench/results/transform_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

OUTPUT = RESULTS_DIR / "transform_cost.json"
MASK = r"^([^@])[^@]*@"
VARIANTS = ("none", "arrow", "pandas")


def mask_email_pandas(frame: Any) -> Any:
    """The ``orders`` definition's mask, written as a team would in pandas."""
    frame["customer_email"] = frame["customer_email"].str.replace(MASK, r"\1***@", regex=True)
    return frame


def orders_batches(rows: int, batch_rows: int) -> list[Any]:
    """``rows`` deterministic orders as record batches of ``batch_rows``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    statuses = pa.array(["new", "paid", "shipped", "delivered", "returned", "cancelled"])
    countries = pa.array(["SE", "DE", "FR", "ES", "IT", "PL", "NL", "US", "GB", "FI"])
    start = int(np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64))
    batches = []
    for low in range(0, rows, batch_rows):
        i = np.arange(low + 1, min(rows, low + batch_rows) + 1, dtype=np.int64)
        customer = (i * 7919) % 250_000 + 1
        names = pc.binary_join_element_wise("customer.", pa.array(customer).cast(pa.string()), "")
        created = start + i * 31_000_000
        note = pc.binary_join_element_wise("gift wrap ", pa.array(i % 5).cast(pa.string()), "")
        columns = {
            "order_id": pa.array(i * 3 + (i % 2)),
            "customer_id": pa.array(customer),
            "customer_email": pc.binary_join_element_wise(names, "@example.com", ""),
            "status": statuses.take(pa.array(i % len(statuses))),
            "amount": _amounts(i),
            "currency": pa.array(np.where(i % 3 == 0, "USD", "EUR")),
            "quantity": pa.array((i % 9 + 1).astype(np.int32)),
            "product_sku": pc.binary_join_element_wise(
                "SKU-", pc.utf8_lpad(pa.array((i * 13) % 20_000).cast(pa.string()), 5, "0"), ""
            ),  # fmt: skip
            "country": countries.take(pa.array(i % len(countries))),
            "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
            "updated_at": pa.array(created + (i % 72) * 3_600_000_000, pa.timestamp("us", tz="UTC")),
            "note": pc.if_else(pa.array(i % 10 == 0), pa.scalar(None, pa.string()), note),
        }
        batches.append(pa.RecordBatch.from_pydict(columns))
    return batches


def _amounts(i: Any) -> Any:
    """Prices 0.01–999.99 as ``numeric(12, 2)`` arrives: decimals whose unscaled values are whole cents."""
    import numpy as np
    import pyarrow as pa

    unscaled = np.zeros((len(i), 2), dtype=np.int64)  # little-endian 128-bit: low word, high word (0: positive)
    unscaled[:, 0] = (i * 137) % 99_999 + 1
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(i), [None, pa.py_buffer(unscaled.tobytes())])


def _definition(variant: str) -> Any:
    from export_tx.definition import ExportDefinition
    from export_tx.definitions.orders import mask_email
    from export_tx.sources import SqliteSource

    transforms: dict[str, Any] = {"none": {}, "arrow": {"transform": mask_email},
                                  "pandas": {"pandas_transform": mask_email_pandas}}[variant]  # fmt: skip
    return ExportDefinition(name=f"transform_cost_{variant}", description="", source=SqliteSource(),
                            sql="SELECT 1 AS order_id", key_column="order_id", **transforms)  # fmt: skip


def write_once(variant: str, batches: list[Any], path: Path) -> float:
    """Seconds to transform and write ``batches`` to ``path`` the way an export batch does."""
    from export_tx.columns.conversions import batch_transform, conform
    from export_tx.formats.parquet import write_parquet

    schema = batches[0].schema
    began = time.perf_counter()
    apply: Callable[[Any], Any] | None = batch_transform(_definition(variant), schema)

    def stream() -> Any:
        for batch in batches:
            out = batch if apply is None else apply(batch)
            yield out if out.schema.equals(schema, check_metadata=False) else conform(out, schema)

    with path.open("wb") as sink:
        rows = write_parquet(sink, schema, stream())
    elapsed = time.perf_counter() - began
    if rows != sum(b.num_rows for b in batches):
        raise RuntimeError(f"{variant}: wrote {rows} rows of {sum(b.num_rows for b in batches)}")
    return elapsed


def measure(rows: int, batch_rows: int, repeat: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    began = time.perf_counter()
    batches = orders_batches(rows, batch_rows)
    generated_s = time.perf_counter() - began
    import pandas  # noqa: F401  (imported before timing: a one-off cost, not a per-batch one)

    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="transform-cost-") as tmp:
        files = {v: Path(tmp) / f"{v}.parquet" for v in VARIANTS}
        for _ in range(repeat):
            for variant in VARIANTS:  # interleaved: a neighbour's load falls on every variant alike
                runs[variant].append(write_once(variant, batches, files[variant]))
        arrow, via_pandas = pq.read_table(files["arrow"]), pq.read_table(files["pandas"])
        if not arrow.equals(via_pandas):
            raise RuntimeError("the pandas transform's file differs from the Arrow transform's")
        plain = pq.read_table(files["none"], columns=["customer_email"]).column(0)
        if plain.equals(arrow.column("customer_email")):
            raise RuntimeError("the mask changed nothing")
        sizes = {v: files[v].stat().st_size for v in VARIANTS}
    best = {v: min(t) for v, t in runs.items()}
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cores": _cores()},
        "rows": rows,
        "batch_rows": batch_rows,
        "batches": len(batches),
        "repeat": repeat,
        "generate_s": round(generated_s, 3),
        "wall_s": {v: round(t, 3) for v, t in best.items()},
        "runs_s": {v: [round(t, 3) for t in r] for v, r in runs.items()},
        "file_bytes": sizes,
        "transform_s": {v: round(best[v] - best["none"], 3) for v in ("arrow", "pandas")},
        "pandas_over_arrow": round(best["pandas"] / best["arrow"], 2),
        "pandas_over_none": round(best["pandas"] / best["none"], 2),
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch_rows < 1 or args.repeat < 1:
        parser.error("--rows, --batch-rows and --repeat must be at least 1")
    result = measure(args.rows, args.batch_rows, args.repeat)
    print(f"transform cost: {result['rows']:,} rows in {result['batches']} batches of {result['batch_rows']:,}, "
          f"Parquet (zstd), best of {result['repeat']}")  # fmt: skip
    labels = {"none": "no transform", "arrow": "Arrow e-mail mask", "pandas": "pandas e-mail mask"}
    for variant in VARIANTS:
        extra = "" if variant == "none" else f"   (transform +{result['transform_s'][variant]:.2f} s)"
        print(f"  {labels[variant]:<20} {result['wall_s'][variant]:7.2f} s{extra}")
    print(f"  pandas / Arrow       {result['pandas_over_arrow']:7.2f}x")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
