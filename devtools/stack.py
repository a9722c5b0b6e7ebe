"""A real Airflow stack on one machine: api-server, scheduler, dag-processor, triggerer.

Used by ``make demo`` / ``make down``, the end-to-end tests and the benchmark, so all three
run the product the same way. Each component runs in its own process group and is stopped
with SIGTERM (then SIGKILL), so nothing is orphaned. LocalExecutor and SQLite metadata by
default (the embedded default); every setting can be overridden through ``extra_env``.

With CeleryExecutor (``extra_env``: executor, PostgreSQL metadata, broker and result backend),
``workers`` names Celery workers that ``start()`` starts beside the components, or call
``start_worker(name)`` / ``stop_worker(name)`` one by one. Each worker has its own folder, log
and process group, and names itself through :func:`hostname`, so several on one machine are
told apart in the task instances.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The model: a platform admin, two analysts, a viewer (README: "Who may do what").
DEMO_USERS = "admin:admin,analyst:user,bob:user,viewer:viewer"
AUTH_MANAGER = "export_tx.api.auth.ExportsAuthManager"
#: Who requests the demo's export: an analyst, who then finds it on the Exports page and in the CLI.
DEMO_REQUESTER = "analyst"


#: Airflow signs its tokens with HS512: RFC 7518 asks for a key of at least 64 bytes (PyJWT warns
#: below that, on every token it checks).
JWT_SECRET_MIN_BYTES = 64

#: How long :meth:`AirflowStack.stop` lets the triggerer outlive the other components.
TRIGGERER_GRACE_S = 2.0

# Airflow's [database] sql_alchemy_connect_args for the embedded SQLite metadata database.
SQLITE_CONNECT_ARGS: dict[str, Any] = {"timeout": 30}


class StackError(RuntimeError):
    pass


@dataclass
class AirflowStack:
    home: Path
    port: int = 8080
    extra_env: Mapping[str, str] = field(default_factory=dict)
    repo: Path = REPO
    #: api-server worker processes (``[api] workers``): one for the demo, the tests and the
    #: benchmark unless its ``--api-workers`` says otherwise (README: "Running it fast").
    api_workers: int = 1
    #: Celery workers that ``start()`` starts too (CeleryExecutor only), e.g. ``("w1", "w2")``.
    workers: Sequence[str] = ()
    _worker_procs: dict[str, subprocess.Popen[bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def _jwt_secret(self) -> str:
        path = self.home / "jwt_secret"
        if not path.exists() or len(path.read_text().strip()) < JWT_SECRET_MIN_BYTES:
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(JWT_SECRET_MIN_BYTES))
            path.chmod(0o600)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        """Environment for every component (and for CLI calls such as ``db migrate``)."""
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{bin_dir}:{env.get('PATH', '')}",
                # The stack's own hooks (SQLite connect args, hostname_callable) live in devtools/,
                # which is not part of the installed package; config/ holds airflow_local_settings
                # (what a deployment's $AIRFLOW_HOME/config holds: the preload of what tasks import).
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(self.repo), str(self.repo / "config"), env.get("PYTHONPATH", "")) if p
                ),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.repo / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.repo / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": DEMO_USERS,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": f"http://localhost:{self.port}",
                "AIRFLOW__API__WORKERS": str(self.api_workers),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret(),
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "EXPORT_TX_PUBLIC_URL": f"http://localhost:{self.port}",
                # Marks every process of this stack, task runners in their own process groups too.
                "EXPORT_TX_STACK_HOME": str(self.home),
            }
        )
        env.update(self.extra_env)
        if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite").startswith("sqlite"):
            # Several components share one SQLite file: wait for a lock instead of failing at once.
            env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "devtools.stack.SQLITE_CONNECT_ARGS")
        return env

    # -- lifecycle ---------------------------------------------------------------------

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / "logs" / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            rc = subprocess.call(["airflow", "db", "migrate"], env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        if rc != 0:
            raise StackError(f"'airflow db migrate' failed (exit {rc}); see {log}")
        self._sqlite_wal()

    def _sqlite_wal(self) -> None:
        """The embedded SQLite metadata database in write-ahead-log mode (kept in the file): the
        api-server's reads (every request checks its token there) no longer wait for the
        scheduler's commits, and a commit is one sync instead of a rollback journal's several."""
        import sqlite3

        url = self.env().get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"sqlite:///{self.home}/airflow.db"
        if not url.startswith("sqlite:///"):
            return
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        finally:
            conn.close()
        if mode != "wal":
            raise StackError(f"the metadata database could not switch to WAL mode (it is in {mode} mode)")

    def running_pids(self) -> dict[str, int]:
        if not self.state_file.exists():
            return {}
        pids = json.loads(self.state_file.read_text()).get("pids", {})
        return {name: pid for name, pid in pids.items() if _alive(pid)}

    def start(self) -> None:
        """Start the components not running yet (each in its own session / process group)."""
        running = self.running_pids()
        env = self.env()
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pids = dict(running)
        for name in COMPONENTS:
            if name in running:
                continue
            out = (logs / f"{name}.log").open("ab")
            proc = subprocess.Popen(
                ["airflow", name],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
            pids[name] = proc.pid
        self._write_state(pids=pids)
        for name in self.workers:
            self.start_worker(name)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every component's and worker's process group, then SIGKILL what is left."""
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        pids = state.get("pids", {})
        workers = state.get("workers", {})
        for pid in [*pids.values(), *workers.values()]:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        others_gone: float | None = None
        while time.monotonic() < deadline and (
            any(_group_alive(p) for p in pids.values())
            or any(self.worker_processes(n) for n in workers)
            or self._marked_processes()
        ):
            # Airflow's triggerer gives its trigger runner 10 s to clean up its triggers before it
            # escalates; with the whole stack going there is nothing left to hand them to.
            alive = [name for name, p in pids.items() if _group_alive(p)]
            if alive == ["triggerer"] and not any(self.worker_processes(n) for n in workers):
                others_gone = others_gone or time.monotonic()
                if time.monotonic() - others_gone > TRIGGERER_GRACE_S:
                    _signal_group(pids["triggerer"], signal.SIGKILL)
            time.sleep(0.3)
        for pid in pids.values():
            _signal_group(pid, signal.SIGKILL)
        for name in workers:
            self._kill_worker_tree(name, workers[name])
        for pid in self._marked_processes():  # e.g. a task runner orphaned by a killed executor
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.state_file.unlink(missing_ok=True)

    def stop_component(self, name: str, timeout: float = 30) -> None:
        """Stop one component (SIGTERM to its process group, SIGKILL after ``timeout``), as an
        operator restarting it would; ``start()`` starts it again. Task runners live in process
        groups of their own and are not touched."""
        pids = self._pids()
        pid = pids.pop(name, None)
        if pid is None:
            raise StackError(f"{name} is not a running component of this stack")
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.2)
        _signal_group(pid, signal.SIGKILL)
        self._write_state(pids=pids)

    def _marked_processes(self) -> list[int]:
        return _processes_with_env({f"EXPORT_TX_STACK_HOME={self.home}".encode()})

    # -- Celery workers ----------------------------------------------------------------

    def worker_pids(self) -> dict[str, int]:
        """The Celery workers started by this stack that are still running (name → pid)."""
        workers = self._state().get("workers", {})
        return {name: pid for name, pid in workers.items() if _alive(pid)}

    def worker_log(self, name: str) -> Path:
        return self.home / "logs" / f"worker-{name}.log"

    def start_worker(
        self,
        name: str,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> int:
        """Start the Celery worker ``name@<host>`` unless it runs; return its process (group) id.

        Its own process group, working directory (``workers/<name>``) and log
        (``logs/worker-<name>.log``); ``EXPORT_TX_WORKER_NAME=<name>``, so with
        ``[core] hostname_callable = devtools.stack.hostname`` its task instances carry
        ``<name>`` as hostname. No log server (``--skip-serve-logs``): several workers on one
        machine would fight over its port, and the api-server reads the task logs from the shared
        ``logs/`` folder. ``queues`` / ``concurrency`` default to ``[celery]`` settings.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"invalid worker name {name!r}")
        running = self.worker_pids()
        if name in running:
            return running[name]
        cwd = self.home / "workers" / name
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.worker_log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = self.env()
        env["EXPORT_TX_WORKER_NAME"] = name
        env["EXPORT_TX_WORKER_HOME"] = str(self.home)  # marks every process of this worker
        env.update(extra_env or {})
        command = ["airflow", "celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
        command += ["--pid", str(cwd / "worker.pid")]
        if queues:
            command += ["--queues", ",".join(queues)]
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
            )
        self._worker_procs[name] = proc
        workers = dict(self._state().get("workers", {}))
        workers[name] = proc.pid
        self._write_state(workers=workers)
        return proc.pid

    def stop_worker(self, name: str, *, kill: bool = False, timeout: float = 30) -> None:
        """Stop a worker: SIGTERM (Celery's warm shutdown) and SIGKILL after ``timeout``, or
        SIGKILL at once with ``kill=True`` (a crashed host). Either way every process of the
        worker ends, including task runners, which Airflow puts in process groups of their own."""
        workers = dict(self._state().get("workers", {}))
        pid = workers.pop(name, None)
        if pid is None:
            return
        if not kill:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (_group_alive(pid) or self.worker_processes(name)):
                time.sleep(0.3)
        self._kill_worker_tree(name, pid)
        self._write_state(workers=workers)

    def wait_workers(self, names: Sequence[str] | None = None, timeout: float = 120) -> None:
        """Until every named worker (default: all started) answers a Celery ping."""
        from celery import Celery  # type: ignore[import-untyped]

        wanted = set(names if names is not None else self._state().get("workers", {}))
        env = self.env()
        broker = env.get("AIRFLOW__CELERY__BROKER_URL")
        if not broker:
            raise StackError("wait_workers needs AIRFLOW__CELERY__BROKER_URL in the stack's environment")
        app = Celery("export_tx_devstack", broker=broker, set_as_current=False)
        deadline = time.monotonic() + timeout
        answered: set[str] = set()
        try:
            while time.monotonic() < deadline:
                running = self.worker_pids()
                dead = sorted(wanted - set(running))
                if dead:
                    logs = ", ".join(str(self.worker_log(n)) for n in dead)
                    raise StackError(f"worker {', '.join(dead)} is not running; see {logs}")
                replies = app.control.ping(timeout=1.0)
                answered = {node.split("@", 1)[0] for reply in replies for node in reply}
                if wanted <= answered:
                    return
                time.sleep(0.5)
        finally:
            app.close()
        missing = ", ".join(sorted(wanted - answered))
        raise StackError(f"Celery worker(s) {missing} not ready after {timeout:.0f} s; see {self.home / 'logs'}")

    def worker_processes(self, name: str) -> list[int]:
        """Every live process of worker ``name`` (whatever its process group), by its environment."""
        marks = {f"EXPORT_TX_WORKER_NAME={name}".encode(), f"EXPORT_TX_WORKER_HOME={self.home}".encode()}
        return _processes_with_env(marks)

    def _kill_worker_tree(self, name: str, pid: int) -> None:
        # Stop the worker first so it forks no new task runner while its processes are killed.
        _signal_group(pid, signal.SIGSTOP)
        for _ in range(50):
            found = self.worker_processes(name)
            if not found and not _group_alive(pid):
                break
            _signal_group(pid, signal.SIGKILL)
            for other in found:
                # Its whole group: a task runner's children share the runner's group.
                try:
                    _signal_group(os.getpgid(other), signal.SIGKILL)
                    os.kill(other, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.1)
        proc = self._worker_procs.pop(name, None)
        if proc is not None:
            try:
                proc.wait(timeout=10)  # reap it: no zombie left behind
            except subprocess.TimeoutExpired:
                pass

    def _state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        return dict(json.loads(self.state_file.read_text()))

    def _write_state(self, **values: Any) -> None:
        state = self._state()
        state.update(values, port=self.port)
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state))

    def wait_ready(self, timeout: float = 180, dag_id: str = "export_transaction") -> None:
        """Until the api-server answers, every component is healthy and the DAG is parsed
        (and every worker of ``workers`` answers a Celery ping)."""
        deadline = time.monotonic() + timeout
        last = "api-server not answering"
        while time.monotonic() < deadline:
            dead = [n for n, pid in self._pids().items() if not _alive(pid)]
            if dead:
                raise StackError(f"{', '.join(dead)} exited; see {self.home / 'logs'}")
            try:
                health = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
                unhealthy = [
                    k
                    for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                    if (health.get(k) or {}).get("status") != "healthy"
                ]
                if unhealthy:
                    last = f"waiting for {', '.join(unhealthy)}"
                else:
                    with self.client("admin") as client:
                        answer = client.get(f"/api/v2/dags/{dag_id}")
                        if answer.status_code == 200:
                            if self.workers:
                                self.wait_workers(self.workers, timeout=max(deadline - time.monotonic(), 10))
                            return
                        last = f"DAG {dag_id} not parsed yet ({answer.status_code})"
            except (httpx.HTTPError, ValueError, StackError) as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(1)
        raise StackError(f"the Airflow stack was not ready after {timeout:.0f} s: {last}")

    def _pids(self) -> dict[str, int]:
        if not self.state_file.exists():
            return {}
        return dict(json.loads(self.state_file.read_text()).get("pids", {}))

    # -- clients -----------------------------------------------------------------------

    def passwords(self) -> dict[str, str]:
        if not self.passwords_file.exists():
            raise StackError(f"{self.passwords_file} does not exist yet (the api-server writes it)")
        return dict(json.loads(self.passwords_file.read_text()))

    def token(self, user: str) -> str:
        answer = httpx.post(
            f"{self.base_url}/auth/token", json={"username": user, "password": self.passwords()[user]}, timeout=10
        )
        if answer.status_code not in (200, 201):
            raise StackError(f"login as {user} failed: {answer.status_code} {answer.text[:200]}")
        return str(answer.json()["access_token"])

    def client(self, user: str) -> httpx.Client:
        # Above SQLite's 30 s lock wait (the embedded metadata database): a slow answer, not an error.
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=75)

    def trigger(
        self, client: httpx.Client, conf: dict[str, Any], run_id: str | None = None, dag_id: str = "export_transaction"
    ) -> dict[str, Any]:
        """Trigger a run through the stable REST API (no logical date).

        The run id is chosen here, so a retry after a server error (SQLite metadata can be
        briefly locked on the embedded default) can never create a second run: it finds the first.
        """
        from datetime import UTC, datetime

        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        url = f"/api/v2/dags/{dag_id}/dagRuns"
        answer: httpx.Response | None = None
        for attempt in range(4):
            try:
                answer = client.post(url, json=body)
            except httpx.TimeoutException:
                # The embedded SQLite metadata database can hold a request past the client's
                # timeout; the run id is fixed, so asking again never makes a second run.
                time.sleep(1 + attempt)
                continue
            if answer.status_code == 200:
                return dict(answer.json())
            if answer.status_code == 409 and attempt:  # an earlier attempt did create it
                return dict(client.get(f"{url}/{quote(run_id, safe='')}").json())
            if answer.status_code < 500:
                break
            time.sleep(1 + attempt)
        raise StackError(f"trigger refused: {answer.status_code} {answer.text[:500]}" if answer is not None
                         else "trigger timed out four times")  # fmt: skip

    def wait_run(
        self, client: httpx.Client, run_id: str, timeout: float = 600, dag_id: str = "export_transaction"
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}").json()["state"]
            except httpx.TimeoutException:  # a briefly locked SQLite metadata database: ask again
                continue
            if state in ("success", "failed"):
                return str(state)
            time.sleep(0.5)
        raise StackError(f"run {run_id} did not finish within {timeout:.0f} s")


def hostname() -> str:
    """``[core] hostname_callable`` for several workers on one machine: each names itself with
    ``EXPORT_TX_WORKER_NAME`` so task instances show which worker ran them."""
    import socket

    return os.environ.get("EXPORT_TX_WORKER_NAME") or socket.getfqdn()


def _alive(pid: int) -> bool:
    """Running (a zombie child of ours counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies do not count)."""
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _processes_with_env(marks: set[bytes]) -> list[int]:
    """Live (non-zombie) processes of ours whose environment holds every one of ``marks``."""
    import psutil

    wanted = dict(mark.decode().split("=", 1) for mark in marks)
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            environ = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if all(environ.get(k) == v for k, v in wanted.items()):
            found.append(proc.info["pid"])
    return found


# -- make demo / make down ---------------------------------------------------------------


def demo_stack() -> AirflowStack:
    home = Path(os.environ.get("EXPORT_TX_DEMO_HOME", REPO / ".airflow"))
    return AirflowStack(home, port=int(os.environ.get("EXPORT_TX_DEMO_PORT", "8080")))


def _step(name: str) -> None:
    print(f"==> {name}", flush=True)


#: The demo's local mail catcher: every e-mail the product sends lands as a file in .airflow/mail/.
DEMO_SMTP_PORT = int(os.environ.get("EXPORT_TX_DEMO_SMTP_PORT", "8025"))
#: Where the demo looks for a PostgreSQL server for the ``orders`` definition (trust auth).
DEMO_PG = os.environ.get("EXPORT_TX_DEMO_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEMO_PG_DATABASE = "export_tx_demo"
DEMO_ORDERS_ROWS = 100_000


def demo_mailbox(stack: AirflowStack) -> Path:
    return stack.home / "mail"


def run_mail_catcher(folder: Path, port: int) -> int:
    """A local SMTP server that keeps every message as ``<folder>/<time>-<n>.eml`` and one line per
    message in ``<folder>/index.txt`` (time, recipients, subject). Runs until SIGTERM."""
    import email
    import threading
    from email import policy

    from aiosmtpd.controller import Controller

    folder.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Keep:
        count = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
            subject = str(email.message_from_bytes(raw, policy=policy.default).get("Subject", ""))
            with lock:
                Keep.count += 1
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                path = folder / f"{stamp}-{Keep.count:03d}.eml"
                path.write_bytes(raw)
                with (folder / "index.txt").open("a") as index:
                    index.write(f"{stamp}  {', '.join(envelope.rcpt_tos)}  {subject}  {path.name}\n")
            return "250 kept"

    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()
    return 0


def _start_mail_catcher(stack: AirflowStack) -> None:
    pids = stack.running_pids()
    if "mail-catcher" in pids:
        return
    log = stack.home / "logs" / "mail-catcher.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack", "mail-catcher", str(demo_mailbox(stack)), str(DEMO_SMTP_PORT)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
            env={**os.environ, "EXPORT_TX_STACK_HOME": str(stack.home)},
        )  # fmt: skip
    stack._write_state(pids={**stack._pids(), "mail-catcher": proc.pid})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            import socket

            socket.create_connection(("127.0.0.1", DEMO_SMTP_PORT), 1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise StackError(f"the mail catcher could not start on port {DEMO_SMTP_PORT}; see {log}") from None
            time.sleep(0.2)
    raise StackError(f"the mail catcher did not answer on port {DEMO_SMTP_PORT}; see {log}")


def _demo_orders_source() -> tuple[str | None, str]:
    """The ``orders`` table for the demo in the local PostgreSQL, if one answers: (DSN, what was
    done), or (None, why not) — the definition is then listed as unavailable, with the reason."""
    try:
        import psycopg

        with psycopg.connect(DEMO_PG, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_PG_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DEMO_PG_DATABASE}"')
    except Exception as exc:  # no server here: the demo goes on without orders
        return None, f"no PostgreSQL at {DEMO_PG.rsplit('@', 1)[-1]} ({type(exc).__name__})"
    dsn = DEMO_PG.rsplit("/", 1)[0] + f"/{DEMO_PG_DATABASE}"
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        have = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
        counted = conn.execute("SELECT count(*) FROM orders").fetchone() if have and have[0] else None
        rows = int(counted[0]) if counted else 0
    if rows != DEMO_ORDERS_ROWS:
        from devtools.demo_data import generate_orders_pg

        generate_orders_pg(dsn, DEMO_ORDERS_ROWS, "orders")
        return dsn, f"generated {DEMO_ORDERS_ROWS:,} orders in {DEMO_PG_DATABASE} on {dsn.rsplit('@', 1)[-1]}"
    return dsn, f"reusing {rows:,} orders in {DEMO_PG_DATABASE} on {dsn.rsplit('@', 1)[-1]}"


def _demo_env(orders_dsn: str | None) -> dict[str, str]:
    env = {
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": DEMO_SMTP_PORT,
            "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 5},
        }),
        "EXPORT_TX_MAIL_FROM": "exports@demo.local",
    }  # fmt: skip
    if orders_dsn:
        env["AIRFLOW_CONN_EXPORT_SOURCE_PG"] = orders_dsn
    return env


def run_demo(rows: int) -> int:
    """Set up (or reuse) the embedded stack, export the whole demo table, print the result."""
    from devtools.demo_data import generate_demo_sqlite

    stack = demo_stack()
    env = stack.env()
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW", "EXPORT_TX"))})
    from export_tx.config import get_settings

    cfg = get_settings()
    step = "generating the demo source"
    try:
        _step(f"{step}: {rows:,} rows in {cfg.demo_db_path}")
        t0 = time.monotonic()
        generate_demo_sqlite(cfg.demo_db_path, rows)
        print(f"    ready in {time.monotonic() - t0:.1f} s")
        step = "looking for a PostgreSQL server for the orders definition"
        _step(step)
        orders_dsn, what = _demo_orders_source()
        print(f"    {what}")
        stack.extra_env = {**stack.extra_env, **_demo_env(orders_dsn)}
        step = "preparing the Airflow metadata database"
        _step(f"{step} in {stack.home}")
        stack.migrate()
        step = "starting the mail catcher"
        _step(f"{step} (SMTP on 127.0.0.1:{DEMO_SMTP_PORT}; e-mails land in {demo_mailbox(stack)})")
        _start_mail_catcher(stack)
        step = "starting the Airflow stack"
        running = [name for name in stack.running_pids() if name in COMPONENTS]
        what = "reusing " + ", ".join(running) if running else ", ".join(COMPONENTS)
        _step(f"{step} ({what})")
        stack.start()
        stack.wait_ready()
        step = "requesting the export as the analyst (POST /exports/v1/transactions)"
        _step(step)
        with stack.client(DEMO_REQUESTER) as client:
            request = {"definition": "demo_orders", "params": {}, "label": "The demo: every order",
                       "notify_email": DEMO_MAIL_TO, "notify_delay_minutes": 0, "force": True}  # fmt: skip
            answer = client.post("/exports/v1/transactions", json=request)
            if answer.status_code != 202:
                raise StackError(f"the request was refused: {answer.status_code} {answer.text[:300]}")
            run_id = answer.json()["id"]
            print(f"    token (the Airflow run id): {run_id}")
            step = "following the transaction (export-tx status --wait)"
            _step(step)
            from export_tx.cli import follow
            from export_tx.store import HeaderStore

            follow(client, run_id, start_timeout=300)
            header = HeaderStore.from_settings().get(run_id)
        mail = _wait_for_mail(stack, run_id) if header.state.value == "SUCCEEDED" else None
        _summary(stack, header, mail)
        return 0 if header.state.value == "SUCCEEDED" else 1
    except Exception as exc:  # the demo explains which step failed and why
        print(f"\nmake demo failed while {step}: {exc}", file=sys.stderr)
        print(f"Component logs are in {stack.home / 'logs'}.", file=sys.stderr)
        return 1


DEMO_MAIL_TO = "analyst@example.com"


def _wait_for_mail(stack: AirflowStack, tx_id: str, timeout: float = 90) -> Path | None:
    """The e-mail the demo's export sent (no delay asked), once the mail catcher has it: the
    newest message naming this token (an earlier demo's e-mails stay in the same folder)."""
    import email
    from email import policy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(demo_mailbox(stack).glob("*.eml"), reverse=True):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            body = message.get_body(("plain", "html"))
            if body is not None and tx_id in body.get_content():
                return path
        time.sleep(1)
    return None


def _summary(stack: AirflowStack, header: Any, mail: Path | None = None) -> None:
    print()
    print(f"token      {header.id}")
    print(f"state      {header.state.value}")
    if header.error:
        print(f"error      {header.error}")
    if header.result_uri:
        print(f"file       {header.result_uri.removeprefix('file://')}")
        print(f"rows       {header.result_rows:,}")
        print(f"bytes      {header.result_bytes:,}")
        print(f"sha256     {header.result_sha256}")
    passwords = stack.passwords()
    print(f"Airflow UI http://localhost:{stack.port}  (login admin / {passwords.get('admin')})")
    others = ", ".join(f"{u} / {p}" for u, p in passwords.items() if u != "admin")
    if others:
        print(f"           other users: {others}")
    print(
        f"Exports    http://localhost:{stack.port}/exports/ui  (sign in as {DEMO_REQUESTER}: the demo's export and "
        "a New export form)"
    )
    print(f"passwords  {stack.passwords_file}")
    if mail is not None:
        print(f"e-mail     {mail}  (every e-mail of the demo: {demo_mailbox(stack) / 'index.txt'})")
    else:
        print(f"e-mail     none yet; e-mails land in {demo_mailbox(stack)}")
    env_file = stack.home / "analyst.env"
    bin_dir = Path(sys.executable).parent
    env_file.write_text(
        f'export PATH="{bin_dir}:$PATH"\n'
        f"export EXPORT_TX_URL=http://localhost:{stack.port}\n"
        f"export EXPORT_TX_USER={DEMO_REQUESTER}\n"
        f"export EXPORT_TX_PASSWORD={passwords.get(DEMO_REQUESTER, '')}\n"
    )
    env_file.chmod(0o600)
    print(f"CLI        . {env_file.relative_to(REPO) if env_file.is_relative_to(REPO) else env_file}"
          f"   then: export-tx list · export-tx status {header.id}")  # fmt: skip
    print(f"API        http://localhost:{stack.port}/exports/v1/transactions/{header.id}  (export-tx status TOKEN)")
    print("The stack keeps running; 'make down' stops it.")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "demo"
    if command == "demo":
        return run_demo(int(os.environ.get("DEMO_ROWS", "1000000")))
    if command == "mail-catcher" and len(args) == 3:
        return run_mail_catcher(Path(args[1]), int(args[2]))
    if command == "down":
        stack = demo_stack()
        if not stack.running_pids():
            print("the demo stack is not running")
        stack.stop()
        print("stopped")
        return 0
    print("usage: python -m devtools.stack [demo|down|mail-catcher FOLDER PORT]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
