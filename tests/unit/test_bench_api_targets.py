"""The benchmark's verdicts on the two API targets: the status target is judged on its own load
(50 pollers following one export), never on the heavier load of 50 exports at once, which is
reported beside it; the POST target on the burst of 50."""

from __future__ import annotations

from typing import Any

from bench.common import Result
from bench.report import SizeRun, load_status_target, post_target, status_target


def _summary(p99: float) -> dict[str, Any]:
    return {"n": 600, "p50_ms": 4.0, "p99_ms": p99, "max_ms": p99 + 5}


def _run(watch_p99: float | None, load_status_p99: float, post_p99: float) -> SizeRun:
    details: dict[str, Any] = {
        "api_load": {
            "post": _summary(post_p99),
            "status": _summary(load_status_p99),
            "server_side": {"post": _summary(post_p99 - 50), "status": _summary(load_status_p99 - 10)},
        }
    }
    if watch_p99 is not None:
        details["watched_export"] = {"exports": 3, "while_running": _summary(watch_p99),
                                     "server_side": _summary(watch_p99 - 4)}  # fmt: skip
    run = SizeRun(1_000_000, "db", True, None)
    run.results.append(Result("product", 5.0, 1_000_000, 1, 1, details))
    return run


def test_the_status_target_is_judged_on_the_pollers_of_one_export() -> None:
    met = status_target([_run(18.4, 95.0, 240.0)], 20.0)
    assert met.verdict == "MET"
    assert "18.4 ms over 600 polls during 3 exports of 1,000,000 rows" in met.measured
    assert "server side (the api-server's access log): p99 14.4 ms" in met.measured
    assert status_target([_run(20.1, 12.0, 240.0)], 20.0).verdict == "MISSED"


def test_the_status_target_is_not_measured_without_its_load() -> None:
    assert status_target([_run(None, 12.0, 240.0)], 20.0).verdict == "NOT MEASURED"


def test_the_fifty_exports_load_is_reported_not_judged() -> None:
    reported = load_status_target([_run(18.4, 95.0, 240.0)])
    assert reported.verdict == "REPORTED"
    assert reported.measured.startswith("95.0 ms on the 1,000,000-row stack")
    assert "server side: p99 85.0 ms" in reported.measured


def test_the_post_target_is_judged_on_the_burst() -> None:
    assert post_target([_run(18.4, 95.0, 240.0)], 250.0).verdict == "MET"
    missed = post_target([_run(18.4, 95.0, 251.0)], 250.0)
    assert missed.verdict == "MISSED"
    assert "251.0 ms on the 1,000,000-row stack; server side (the api-server's access log): p99 201.0 ms" in (
        missed.measured
    )
