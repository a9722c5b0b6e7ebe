"""Watching an Airflow stack from outside: memory of its processes, which task each one ran,
and whether any other Airflow process on the machine could disturb the figures."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import note

SAMPLE_SECONDS = 0.1
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
#: airflow.sdk's task runner names its process after the task instance's id (a UUID):
#: ``setproctitle(f"airflow worker -- {ti.id}")`` in ``airflow/sdk/execution_time/task_runner.py``.
TASK_TITLE = re.compile(r"^airflow worker -- ([0-9a-fA-F-]{36})\b")


def task_instance_id(title: str) -> str | None:
    """The task instance id in a task process' title; None for any other process (the
    executor's workers are ``airflow worker -- LocalExecutor: …``, supervisors keep their title)."""
    found = TASK_TITLE.match(title)
    return found.group(1).lower() if found else None


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    pgrp: int
    zombie: bool
    #: Clock ticks since boot when the process started: with the pid, who it is.
    started: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # fields 3.. of proc(5): state, ppid, pgrp, …
    return ProcStat(ppid=int(fields[1]), pgrp=int(fields[2]), zombie=fields[0] == b"Z", started=int(fields[19]))


def proc_read(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of the process' RSS (``VmHWM``), in bytes."""
    status = proc_read(pid, "status")
    found = re.search(rb"^VmHWM:\s+(\d+) kB", status or b"", re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


@dataclass
class TaskProcess:
    pid: int
    ti_id: str
    #: Every sample: (epoch seconds, RSS, the high-water mark so far), in bytes.
    timeline: list[tuple[float, int, int]]

    @property
    def peak_rss_bytes(self) -> int:
        return max((hwm for _, _, hwm in self.timeline), default=0)

    def peak_before(self, moment: float) -> int:
        """The high-water mark at the last sample before ``moment``."""
        return max((hwm for t, _, hwm in self.timeline if t < moment), default=0)

    def rss_between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss, _ in self.timeline if start <= t <= end]


class StackSampler:
    """Samples, every ``interval`` s in a thread, the summed RSS of every process of an Airflow
    stack, and the peak RSS (the kernel's high-water mark, so a peak between two samples counts)
    of each task process by the task instance it runs. Reads ``/proc`` directly: a sample costs a
    few milliseconds of CPU, which the product's own processes would otherwise lose."""

    def __init__(self, leaders: set[int], interval: float = SAMPLE_SECONDS) -> None:
        self.leaders = leaders
        self.interval = interval
        self.peak_total = 0
        self.samples = 0
        self.tasks: dict[int, TaskProcess] = {}
        #: Every process of the stack ever sampled: pid → its start (a reused pid is not ours).
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def processes(self) -> dict[int, ProcStat]:
        """The components' process groups plus all their descendants (task processes get groups
        of their own), zombies left out."""
        stats = {int(d): s for d in os.listdir("/proc") if d.isdigit() and (s := proc_stat(int(d))) is not None}
        children: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            children.setdefault(stat.ppid, []).append(pid)
        todo = [pid for pid, stat in stats.items() if pid in self.leaders or stat.pgrp in self.leaders]
        found: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, []))
        return {pid: stats[pid] for pid in found if not stats[pid].zombie}

    def sample(self) -> int:
        total = 0
        now = time.time()
        for pid, stat in self.processes().items():
            statm, cmdline = proc_read(pid, "statm"), proc_read(pid, "cmdline")
            if not statm or cmdline is None:
                continue
            rss = int(statm.split()[1]) * PAGE_BYTES
            total += rss
            self.seen.setdefault(pid, stat.started)
            ti_id = task_instance_id(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            peak = peak_rss(pid) if ti_id is not None else None
            if ti_id is not None and peak is not None:
                self.tasks.setdefault(pid, TaskProcess(pid, ti_id, [])).timeline.append((now, rss, peak))
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


def task_instances(client: Any, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """Every task instance of a run, by its id (UUID), through the REST API (100 a page)."""
    found: dict[str, dict[str, Any]] = {}
    url = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    offset = 0
    while True:
        answer = client.get(url, params={"limit": 100, "offset": offset})
        answer.raise_for_status()
        page = answer.json()
        for ti in page["task_instances"]:
            found[str(ti["id"]).lower()] = ti
        offset += len(page["task_instances"])
        if not page["task_instances"] or offset >= page["total_entries"]:
            return found


def other_airflow_processes(
    exclude: Collection[int] = frozenset(), stack_home: Path | None = None, groups: Collection[int] = frozenset()
) -> list[str]:
    """Airflow processes on this machine that are not ours (someone else's stack disturbs the
    figures): not in ``exclude``, not in the process groups ``groups`` (a stack's leaders each lead
    one) and, given ``stack_home``, not marked as that stack's (``EXPORT_TX_STACK_HOME`` in their
    environment; a process that retitles itself, as Airflow's do, may have overwritten it)."""
    import psutil

    mark = f"EXPORT_TX_STACK_HOME={stack_home}".encode() if stack_home else None
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["pid"] in exclude:
            continue
        stat = proc_stat(proc.info["pid"]) if groups else None
        if stat is not None and stat.pgrp in groups:
            continue
        if groups and _descends_from(proc, groups):  # a stack's process in a group of its own
            continue
        title = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] == psutil.STATUS_ZOMBIE or not ("airflow " in title or "bin/airflow" in title):
            continue
        if mark and mark in (proc_read(proc.info["pid"], "environ") or b"").split(b"\0"):
            continue
        found.append(f"{proc.info['pid']} {title[:100]}")
    return found


def _descends_from(proc: Any, groups: Collection[int]) -> bool:
    """Whether a parent of ``proc`` is in one of ``groups``: LocalExecutor's workers and their
    task processes retitle themselves (their environment's mark with it) and may lead groups of
    their own, yet they are the stack's (a 5M run was flagged as disturbed by its own worker)."""
    import psutil

    try:
        parents = proc.parents()
    except psutil.Error:
        return False
    return any((stat := proc_stat(parent.pid)) is not None and stat.pgrp in groups for parent in parents)


def wait_until_quiet(timeout: float) -> list[str]:
    """Wait up to ``timeout`` s until no other Airflow process runs; return those still running."""
    deadline = time.monotonic() + timeout
    others = other_airflow_processes()
    if others:
        note(f"waiting up to {timeout:.0f} s for {len(others)} other Airflow processes to end")
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


def stop_stack(stack: Any, seen: dict[int, int]) -> None:
    """Stop the components' groups, then any process of this stack that outlived them (task
    processes run in process groups of their own), each by its pid and start time."""
    stack.stop()
    for pid, started in seen.items():
        stat = proc_stat(pid)
        if stat is not None and stat.started == started and not stat.zombie:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
