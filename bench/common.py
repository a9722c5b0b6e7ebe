"""What every part of the benchmark shares: paths, the result record, the error, printing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MB = 1_000_000
GB = 1_000_000_000

LABELS = {
    "naive": "naive: pandas read_sql + to_parquet",
    "adbc": "ADBC stream -> ParquetWriter",
    "connectorx": "ConnectorX (parallel) -> ParquetWriter",
    "product": "product: Airflow export_transaction",
}
CONTENDERS = tuple(LABELS)


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


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def note(message: str) -> None:
    print(f"    {message}", flush=True)
