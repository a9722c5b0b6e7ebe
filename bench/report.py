"""What a run prints and writes: per-size tables, the product's details, the targets, the
Markdown, the charts and the README block."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import CONTENDERS, LABELS, MB, REPO, Result

README = REPO / "README.md"
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
MERGE_RSS_LIMIT = 512 * MB
MERGE_SAME_WITHIN = 0.10
STATUS_P99_MS = 20.0
POST_P99_MS = 250.0


@dataclass
class SizeRun:
    """Everything measured on one source size."""

    rows: int
    database: str
    source_reused: bool
    generation_s: float | None
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)
    disturbed: list[str] = field(default_factory=list)

    def result(self, contender: str) -> Result | None:
        return next((r for r in self.results if r.contender == contender), None)

    @property
    def reference(self) -> Result | None:
        """The fastest baseline of this size."""
        baselines = [r for r in self.results if r.contender != "product"]
        return min(baselines, key=lambda r: r.wall_s, default=None)

    @property
    def product(self) -> dict[str, Any]:
        found = self.result("product")
        return found.details if found else {}


# -- the product's timeline ------------------------------------------------------------------

PHASES = ("trigger → first task", "planning", "batches", "gap before the merge", "merge")


def phases(events: list[dict[str, Any]], wall_s: float | None = None) -> list[tuple[str, float]]:
    """The product's timeline from its own processing log (seconds since the header was created):
    planning, the batch phase (to the last batch done), the gap before the merge, the merge —
    and, given the measured wall time, what came before the first task created the header
    (scheduling and task start-up)."""

    def first(test: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((e["s"] for e in events if test(e)), None)

    def last(test: Callable[[dict[str, Any]], bool]) -> float | None:
        found = [e["s"] for e in events if test(e)]
        return found[-1] if found else None

    running = first(lambda e: e["message"].startswith("RUNNING"))
    planned = first(lambda e: e["message"].startswith("planned "))
    batches_done = last(lambda e: e["kind"] == "batch")
    merging = first(lambda e: e["message"].startswith("MERGING"))
    succeeded = first(lambda e: e["message"].startswith("SUCCEEDED"))
    before = None if wall_s is None or succeeded is None else max(wall_s - succeeded, 0.0)
    marks = [(PHASES[0], 0.0, before), (PHASES[1], running, planned), (PHASES[2], planned, batches_done),
             (PHASES[3], batches_done, merging), (PHASES[4], merging, succeeded)]  # fmt: skip
    return [(name, round(end - start, 3)) for name, start, end in marks if start is not None and end is not None]


# -- figures as text -------------------------------------------------------------------------


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:,.1f}"


def vs(result: Result, reference: Result | None) -> str:
    if reference is None:
        return "-"
    return f"{result.wall_s / reference.wall_s:.2f}x"


def table_rows(run: SizeRun) -> list[list[str]]:
    """contender, wall s, rows/s, peak RSS MB, file MB, ratio to the fastest baseline."""
    rows = []
    for contender in CONTENDERS:
        result = run.result(contender)
        if result is not None:
            flag = " (disturbed)" if contender in run.disturbed else ""
            rows.append([LABELS[contender] + flag, f"{result.wall_s:.2f}", f"{result.rows_per_s:,.0f}",
                         mb(result.peak_rss_bytes), mb(result.file_bytes), vs(result, run.reference)])  # fmt: skip
        elif contender in run.skipped:
            rows.append([LABELS[contender], "skipped", "", "", "", run.skipped[contender]["reason"]])
    return rows


def table_header(run: SizeRun) -> list[str]:
    reference = run.reference
    ratio = f"vs fastest baseline ({reference.contender})" if reference else "vs fastest baseline"
    return ["contender", "wall s", "rows/s", "peak RSS MB", "file MB", ratio]


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    align = ["<"] + [">"] * (len(header) - 2) + ["<"]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)).rstrip()

    return [line(header), "-" * len(line(header)), *(line(r) for r in rows)]


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A Markdown table; ``numeric``: every column but the first and the last right-aligned."""
    aligns = ["---"] + ["---:" if numeric else "---"] * (len(header) - 2) + ["---"]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]  # fmt: skip


def product_lines(run: SizeRun) -> list[str]:
    """The product's details of one size, as sentences (printed and in the Markdown)."""
    product = run.result("product")
    if product is None:
        return []
    d = product.details
    lines = [f"product: {d['batches']} batch{'es' if d['batches'] != 1 else ''} (batch_size {d['batch_size_used']:,}"
             f"{', requested' if d.get('batch_size_requested') else ', chosen by the product'}); peak RSS is the sum "
             f"over all stack processes, each counting the pages it shares with the process it was forked from "
             f"(idle before the trigger: {mb(d['idle_stack_rss_bytes'])} MB). Stack: LocalExecutor, Airflow's "
             f"metadata and the header store on {d.get('databases', 'sqlite')}, {d.get('api_workers', 1)} "
             f"api-server worker{'s' if d.get('api_workers', 1) != 1 else ''}."]  # fmt: skip
    merge, batch, rows = d.get("merge_peak_rss_bytes"), d.get("batch_peak_rss_bytes"), d.get("batch_peak_rows") or 0
    per_100k, above = d.get("batch_peak_rss_per_100k_rows_bytes"), d.get("batch_above_floor_per_100k_rows_bytes")
    lines.append(f"task peak RSS: merge {mb(merge)} MB ({d.get('merge_peak_how') or '-'}); "
                 f"largest batch {mb(batch)} MB for {rows:,} rows = "
                 f"{mb(per_100k)} MB per 100k rows ({mb(above)} MB per 100k above the "
                 f"{mb(d.get('task_floor_rss_bytes'))} MB of begin_transaction, which moves no data)")  # fmt: skip
    timeline = phases(d.get("events", []), product.wall_s)
    if timeline:
        lines.append("timeline (from its processing log): " + ", ".join(f"{n} {t:.2f} s" for n, t in timeline))
    first = d.get("first_task")
    if first:
        names = {
            "run_queued_s": "run queued",
            "run_started_s": "run started",
            "task_scheduled_s": "first task scheduled",
            "task_queued_s": "queued",
            "task_started_s": "started",
            "header_created_s": "header created",
        }
        lines.append(
            "before the first task (s after the trigger, Airflow's timestamps): "
            + ", ".join(f"{names[k]} {v:.2f}" for k, v in first.items() if v is not None and k in names)
        )
    small = d.get("small_export")
    if small:
        lines.append(f"~10k-row export ({small['rows']:,} rows, params {json.dumps(small['params'])}): "
                     f"min {small['min_s']:.2f} s, median {small['median_s']:.2f} s over "
                     f"{len(small['walls_s'])} runs (POST → SUCCEEDED){disturbed(small)}")  # fmt: skip
    watch = d.get("watched_export")
    if watch and watch.get("while_running"):
        running, served = watch["while_running"], watch.get("server_side")
        lines.append(
            f"status reads during an export{disturbed(watch)}: {watch['model']}: each export "
            f"{', '.join(f'{w:.2f}' for w in watch['walls_s'])} s (its header created → terminal); "
            f"GET /exports/v1/transactions/{{id}}: "
            f"n={running['n']} while it ran, p50 {running['p50_ms']:.1f} ms, p99 {running['p99_ms']:.1f} ms, "
            f"max {running['max_ms']:.1f} ms"
            + (f"; server side p50 {served['p50_ms']:.1f} ms, p99 {served['p99_ms']:.1f} ms" if served else "")
        )
    load = d.get("api_load")
    if load:
        post, status = load["post"], load["status"]
        lines.append(f"API load{disturbed(load)}: {load['model']}")
        lines.append(f"POST /exports/v1/transactions: n={post['n']} p50 {post['p50_ms']:.1f} ms, "
                     f"p99 {post['p99_ms']:.1f} ms, max {post['max_ms']:.1f} ms")  # fmt: skip
        lines.append(f"GET /exports/v1/transactions/{{id}}: n={status['n']} over {status['duration_s']:.0f} s "
                     f"({status['polls_while_running']} while the exports ran): p50 {status['p50_ms']:.1f} ms, "
                     f"p99 {status['p99_ms']:.1f} ms, max {status['max_ms']:.1f} ms")  # fmt: skip
        served = load.get("server_side") or {}
        if served.get("post") and served.get("status"):
            lines.append(f"the same requests as the api-server's access log timed them (server side): POST "
                         f"p50 {served['post']['p50_ms']:.1f} ms, p99 {served['post']['p99_ms']:.1f} ms; status "
                         f"p50 {served['status']['p50_ms']:.1f} ms, p99 {served['status']['p99_ms']:.1f} ms, "
                         f"max {served['status']['max_ms']:.1f} ms")  # fmt: skip
        ref = load.get("reference")
        if ref:
            beside, alone = ref["beside_status"], ref["alone_after"]
            lines.append(f"Airflow's own GET {ref['path']} through the same api-server, {ref['pollers']} pollers "
                         f"beside them: p50 {beside['p50_ms']:.1f} ms, p99 {beside['p99_ms']:.1f} ms, "
                         f"max {beside['max_ms']:.1f} ms")  # fmt: skip
            lines.append(f"one client alone afterwards ({ref['alone_requests']} requests, one at a time): status "
                         f"p50 {alone['status']['p50_ms']:.1f} ms, p99 {alone['status']['p99_ms']:.1f} ms; "
                         f"{ref['path']} p50 {alone['reference']['p50_ms']:.1f} ms, "
                         f"p99 {alone['reference']['p99_ms']:.1f} ms")  # fmt: skip
    return lines


def disturbed(figures: dict[str, Any]) -> str:
    others = figures.get("other_airflow_processes")
    return f" (disturbed: {len(others)} other Airflow processes ran around it)" if others else ""


def size_title(run: SizeRun) -> str:
    how = "reused" if run.source_reused else f"generated in {run.generation_s or 0:.0f} s"
    return f"{run.rows:,} rows (database {run.database}, {how})"


# -- the targets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    target: str
    measured: str
    verdict: str  # MET, MISSED, NOT MEASURED, REPORTED


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def run_of(runs: list[SizeRun], rows: int) -> SizeRun | None:
    return next((r for r in runs if r.rows == rows), None)


def ratio_target(runs: list[SizeRun], rows: int, limit: float) -> Target:
    name = f"product ÷ fastest baseline ≤ {limit:.2f}x at {rows:,} rows"
    run = run_of(runs, rows)
    product, reference = (run.result("product"), run.reference) if run else (None, None)
    if product is None or reference is None:
        return Target(name, "product and a baseline not both run at this size", "NOT MEASURED")
    value = product.wall_s / reference.wall_s
    return Target(name, f"{value:.2f}x (vs {reference.contender})", verdict(value <= limit))


def naive_target(runs: list[SizeRun], rows: int, limit: float) -> Target:
    name = f"product ÷ naive ≤ {limit:.2f}x at {rows:,} rows"
    run = run_of(runs, rows)
    product, naive = (run.result("product"), run.result("naive")) if run else (None, None)
    if product is None or naive is None:
        why = run.skipped["naive"]["reason"] if run and "naive" in run.skipped else "not both run at this size"
        return Target(name, why, "NOT MEASURED")
    value = product.wall_s / naive.wall_s
    return Target(name, f"{value:.2f}x", verdict(value <= limit))


def merge_rss(runs: list[SizeRun], rows: int) -> tuple[int | None, str]:
    """The merge's peak RSS at ``rows`` and "≤ " when that figure is an upper bound."""
    run = run_of(runs, rows)
    if run is None:
        return None, ""
    bound = str(run.product.get("merge_peak_how", "")).startswith("at most")
    return run.product.get("merge_peak_rss_bytes"), "≤ " if bound else ""


def merge_target(runs: list[SizeRun], rows: int) -> Target:
    name = f"merge peak RSS ≤ {MERGE_RSS_LIMIT / MB:.0f} MB at {rows:,} rows"
    value, bound = merge_rss(runs, rows)
    if value is None:
        return Target(name, "the product did not run at this size (or its merge was not sampled)", "NOT MEASURED")
    return Target(name, f"{bound}{mb(value)} MB", verdict(value <= MERGE_RSS_LIMIT))


def merge_same_target(runs: list[SizeRun], small: int, large: int) -> Target:
    name = f"merge peak RSS the same at {small:,} and {large:,} rows (within {MERGE_SAME_WITHIN:.0%})"
    (a, a_bound), (b, b_bound) = merge_rss(runs, small), merge_rss(runs, large)
    if a is None or b is None:
        return Target(name, "the product did not run at both sizes", "NOT MEASURED")
    change = b / a - 1
    text = f"{a_bound}{mb(a)} MB → {b_bound}{mb(b)} MB ({change:+.1%})"
    return Target(name, text, verdict(abs(change) <= MERGE_SAME_WITHIN))


def batch_target(runs: list[SizeRun]) -> Target:
    found = [(r.rows, r.product.get("batch_peak_rss_per_100k_rows_bytes"), r.product.get("batch_peak_rows"))
             for r in runs if r.product.get("batch_peak_rss_per_100k_rows_bytes")]  # fmt: skip
    if not found:
        return Target("batch task peak RSS per 100k rows", "no batch task sampled", "NOT MEASURED")
    text = "; ".join(f"{mb(v)} MB at {rows:,} rows (batch of {batch:,})" for rows, v, batch in found)
    return Target("batch task peak RSS per 100k rows of its batch", text, "REPORTED")


def small_target(runs: list[SizeRun]) -> Target:
    found = [(r.rows, r.product["small_export"]) for r in runs if r.product.get("small_export")]
    if not found:
        return Target("~10,000-row export latency", "not run", "NOT MEASURED")
    text = "; ".join(f"{s['rows']:,} rows from the {rows:,}-row table: min {s['min_s']:.2f} s, "
                     f"median {s['median_s']:.2f} s" for rows, s in found)  # fmt: skip
    return Target("~10,000-row export latency (POST → SUCCEEDED)", text, "REPORTED")


def status_target(runs: list[SizeRun], limit_ms: float) -> Target:
    """Judged on its own load: the pollers following one export (``watched_export``)."""
    name = f"status (GET /transactions/{{id}}), 50 pollers during an export, p99 ≤ {limit_ms:.0f} ms"
    found = [(r.rows, r.product["watched_export"]) for r in runs
             if (r.product.get("watched_export") or {}).get("while_running")]  # fmt: skip
    if not found:
        return Target(name, "not run", "NOT MEASURED")
    text = "; ".join(f"{w['while_running']['p99_ms']:.1f} ms over {w['while_running']['n']} polls during "
                     f"{w['exports']} exports of {rows:,} rows" for rows, w in found)  # fmt: skip
    served = found[0][1].get("server_side")
    if served:
        text += f"; server side (the api-server's access log): p99 {served['p99_ms']:.1f} ms"
    return Target(name, text, verdict(all(w["while_running"]["p99_ms"] <= limit_ms for _, w in found)))


def post_target(runs: list[SizeRun], limit_ms: float) -> Target:
    """Judged on the API load's burst of POSTs."""
    name = f"POST /transactions p99 ≤ {limit_ms:.0f} ms"
    loads = [(r.rows, r.product["api_load"]) for r in runs if r.product.get("api_load")]
    if not loads:
        return Target(name, "no API load run", "NOT MEASURED")
    text = "; ".join(f"{load['post']['p99_ms']:.1f} ms on the {rows:,}-row stack" for rows, load in loads)
    served = (loads[0][1].get("server_side") or {}).get("post")
    if served:
        text += f"; server side (the api-server's access log): p99 {served['p99_ms']:.1f} ms"
    return Target(name, text, verdict(all(load["post"]["p99_ms"] <= limit_ms for _, load in loads)))


def load_status_target(runs: list[SizeRun]) -> Target:
    """The status reads while the 50 exports of the POST burst all run: more than the target asks
    (fifty exports on the same cores, not one), reported beside it."""
    name = "status p99 while the 50 exports of the POST burst run at once (beyond the target's load)"
    found = [(r.rows, r.product["api_load"]) for r in runs if r.product.get("api_load")]
    if not found:
        return Target(name, "no API load run", "NOT MEASURED")
    rows, load = found[0]
    text = f"{load['status']['p99_ms']:.1f} ms on the {rows:,}-row stack"
    ref = load.get("reference")
    if ref:
        text += (
            f" (Airflow's own GET {ref['path']} under the same load: p99 {ref['beside_status']['p99_ms']:.1f} ms;"
            f" one client alone on a quiet stack: status p99 {ref['alone_after']['status']['p99_ms']:.1f} ms)"
        )
    served = (load.get("server_side") or {}).get("status")
    if served:
        text += f"; server side: p99 {served['p99_ms']:.1f} ms"
    return Target(name, text, "REPORTED")


def targets(runs: list[SizeRun]) -> list[Target]:
    return [
        ratio_target(runs, 5_000_000, 1.5),
        ratio_target(runs, 20_000_000, 1.25),
        naive_target(runs, 5_000_000, 0.3),
        merge_target(runs, 1_000_000),
        merge_target(runs, 20_000_000),
        merge_same_target(runs, 1_000_000, 20_000_000),
        batch_target(runs),
        small_target(runs),
        status_target(runs, STATUS_P99_MS),
        load_status_target(runs),
        post_target(runs, POST_P99_MS),
    ]


def target_lines(found: list[Target]) -> list[str]:
    return [f"target {t.target} … measured {t.measured} … {t.verdict}" for t in found]


# -- printing and Markdown -------------------------------------------------------------------


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['nproc']} cores ({info['cpu_model']}), {info['memory_gb']} GB RAM; PostgreSQL "
            f"{info['postgresql']}; Airflow {info['airflow']}, pyarrow {info['pyarrow']}, ConnectorX "
            f"{info['connectorx']}, pandas {info['pandas']}, Python {info['python']}; {info['date']}")  # fmt: skip


def print_report(runs: list[SizeRun], found: list[Target], info: dict[str, Any]) -> None:
    print()
    print(f"machine: {machine_line(info)}")
    for run in runs:
        print()
        print(size_title(run))
        for line in text_table(table_header(run), table_rows(run)):
            print(line)
        for line in product_lines(run):
            print(line)
        if run.disturbed:
            print(f"WARNING: other Airflow processes ran during {', '.join(run.disturbed)}; rerun on a quiet machine")
    print()
    print("summary against the targets")
    for line in target_lines(found):
        print(line)


def markdown(runs: list[SizeRun], found: list[Target], info: dict[str, Any]) -> str:
    out = [f"Measured on {machine_line(info)}.", ""]
    for run in runs:
        out += [f"**{size_title(run)}**", "", *markdown_table(table_header(run), table_rows(run)), ""]
        out += [f"- {line}" for line in product_lines(run)]
        if run.disturbed:
            out.append(f"- WARNING: other Airflow processes ran during {', '.join(run.disturbed)}")
        out.append("")
    verdicts = [[t.target, t.measured, t.verdict] for t in found]
    out += ["**Targets**", "", *markdown_table(["target", "measured", "verdict"], verdicts, numeric=False)]
    return "\n".join(out) + "\n"


def update_readme(content: str) -> bool:
    """Replace what is between the README's bench markers; False if the markers are missing."""
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    block = (f"{README_START}\n{content}\n![time and memory](bench/results/latest.png)\n\n"
             f"![phases](bench/results/phases.png)\n{README_END}")  # fmt: skip
    README.write_text(text[:start] + block + text[end + len(README_END) :])
    return True


def short_count(value: float) -> str:
    """1,000,000 → 1M, 400,000 → 400k."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    return f"{value / 1_000:g}k" if value >= 1_000 else f"{value:g}"


# -- charts ----------------------------------------------------------------------------------


def chart(runs: list[SizeRun], path: Path) -> None:
    """Two panels: wall time and peak RSS against rows, one line per contender (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for contender in CONTENDERS:
        found = [(r.rows, res) for r in runs if (res := r.result(contender)) is not None]
        if not found:
            continue
        xs = [rows for rows, _ in found]
        time_ax.plot(xs, [res.wall_s for _, res in found], marker="o", label=LABELS[contender])
        label = "product: all stack processes (sum)" if contender == "product" else LABELS[contender]
        rss_ax.plot(xs, [res.peak_rss_bytes / MB for _, res in found], marker="o", label=label)
    for key, label in (
        ("merge_peak_rss_bytes", "product: merge task"),
        ("batch_peak_rss_bytes", "product: largest batch task"),
    ):
        tasks = [(r.rows, int(value)) for r in runs if (value := r.product.get(key))]
        if tasks:
            rss_ax.plot([x for x, _ in tasks], [y / MB for _, y in tasks], linestyle="--", marker=".", label=label)
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.6g}")
    for ax, title, unit in ((time_ax, "wall time", "seconds"), (rss_ax, "peak RSS", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: short_count(value)))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([r.rows for r in runs])
        ax.set_xlabel("rows")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def phases_chart(runs: list[SizeRun], path: Path) -> None:
    """The product's phases as one stacked horizontal bar per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(r.rows, dict(phases(product.details.get("events", []), product.wall_s)))
            for r in runs if (product := r.result("product")) is not None]  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 2.0 + 0.6 * max(len(bars), 1)))
    labels = [f"{rows:,} rows" for rows, _ in bars]
    left = [0.0] * len(bars)
    for name in PHASES:
        widths = [timeline.get(name, 0.0) for _, timeline in bars]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("seconds since the trigger")
    ax.set_title("product: where the time goes")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncols=len(PHASES), loc="lower center")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
