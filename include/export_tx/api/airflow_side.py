"""What the API asks of Airflow itself. Runs inside the api-server, which owns the metadata
database; these are the same internal calls its own REST routes make (pinned Airflow)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from export_tx.config import DAG_ID

#: The export DAG's only leaf (``dags/export_transaction.py``): the run's state follows it.
FINALIZE_TASK = "finalize_transaction"

R = TypeVar("R")


class RunNotCreated(Exception):
    """Creating a run failed in the run maker's process; ``kind`` names the original error (its
    own object may not cross between processes: Airflow's carry ORM rows)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def error_kind(exc: BaseException) -> str:
    """The name of what went wrong, across the run maker's process boundary too."""
    return exc.kind if isinstance(exc, RunNotCreated) else type(exc).__name__


def _warm_child() -> None:
    """The run maker's start: Airflow's run-creation code imported once (about two seconds of
    CPU), before the first request needs it."""
    import airflow.api.common.trigger_dag
    import airflow.models.dagrun  # noqa: F401


class RunMaker:
    """Airflow's run creation, in a child process of the api-server that lives as long as it.

    Creating a run is Airflow's own code path (the serialized DAG loaded, its params checked, a task
    instance per task, a commit to the metadata database): 20-35 ms of CPU here, every bit of it
    under the interpreter lock. In the api-server's own process fifty of them, one after another
    after a burst of requests, stopped it answering anything for about 1.5 s. In a process of its
    own it takes the other core; the api-server's thread only waits on a pipe. Started (spawned: a
    fresh interpreter, never a fork of a threaded server) at the api-server's first ``/exports``
    request; a maker that died is replaced at the next call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._owner = 0  # the pid that made the pool: a forked copy of this object makes its own

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None or self._owner != os.getpid():
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_warm_child)
                self._owner = os.getpid()
            return self._pool

    def start(self) -> None:
        """Start the process now (its imports take a moment), without waiting for it."""
        self._executor().submit(os.getpid)

    def call(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` in the maker's process (``fn`` a module-level function, args picklable)."""
        for attempt in range(2):
            pool = self._executor()
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool:  # the process died (killed, out of memory): a new one, once
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


#: The run maker of this api-server process.
maker = RunMaker()


def trigger_run(tx_id: str, conf: dict[str, Any], user_name: str, dag_id: str = DAG_ID) -> None:
    """Create the run ``tx_id`` of ``dag_id`` (no logical date), exactly like ``POST …/dagRuns``,
    in the run maker's process; raises :class:`RunNotCreated` when it could not."""
    maker.call(create_run, tx_id, conf, user_name, dag_id)


def create_run(tx_id: str, conf: dict[str, Any], user_name: str, dag_id: str = DAG_ID) -> None:
    """:func:`trigger_run`'s work, where it runs: any failure comes back as :class:`RunNotCreated`."""
    try:
        _create_run(tx_id, conf, user_name, dag_id)
    except Exception as exc:
        raise RunNotCreated(type(exc).__name__, str(exc)[:500]) from None


def _create_run(tx_id: str, conf: dict[str, Any], user_name: str, dag_id: str) -> None:
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import OperationalError

    for attempt in range(3):
        try:
            with create_session() as session:
                trigger_dag(
                    dag_id,
                    triggered_by=DagRunTriggeredByType.REST_API,
                    triggering_user_name=user_name,
                    run_id=tx_id,
                    conf=conf,
                    logical_date=None,
                    session=session,
                )
            return
        except DagRunAlreadyExists:
            if attempt:  # the earlier attempt committed after all
                return
            raise
        except OperationalError:
            # The embedded SQLite metadata database can be locked for a moment; the run id is
            # fixed, so trying again never makes a second run.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def stop_run(tx_id: str) -> bool:
    """Mark the run failed, like ``PATCH …/dagRuns/{id} {"state": "failed"}``: running task
    instances are failed (their processes stop) and pending ones skipped."""

    from airflow.api_fastapi.common.dagbag import get_dag_for_run
    from airflow.api_fastapi.core_api.datamodels.dag_run import DagRunMutableStates
    from airflow.api_fastapi.core_api.services.public.dag_run import patch_dag_run_state
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select, update
    from sqlalchemy.exc import OperationalError

    for attempt in range(3):
        try:
            with create_session() as session:
                dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == tx_id))
                if dag_run is None or dag_run.state in (DagRunState.SUCCESS, DagRunState.FAILED):
                    return False
                dag = get_dag_for_run(DBDagBag(), dag_run, session=session)
                patch_dag_run_state(dag=dag, dag_run=dag_run, state=DagRunMutableStates.FAILED, session=session)
                # Marking a run failed skips its pending tasks, our finalizing leaf too. A scheduler
                # loop that read the run as running just before (SQLite metadata has no row locks)
                # would then see every leaf skipped and write the run back to success. A failed
                # leaf makes every later evaluation agree: the cancelled run ends failed.
                session.execute(
                    update(TaskInstance)
                    .where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == tx_id,
                           TaskInstance.task_id == FINALIZE_TASK,
                           TaskInstance.state.in_([TaskInstanceState.SKIPPED, None]))
                    .values(state=TaskInstanceState.FAILED)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip
            return True
        except OperationalError:  # a briefly locked SQLite metadata database: try again
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    return False


class RunNotResumable(Exception):
    """The transaction's Airflow run cannot be resumed (missing, or not ended failed); says why."""


#: The export DAG's mapped batch task: map index ``i`` exports batch ``i + 1``.
BATCH_TASK = "export_batch"


def resume_run(tx_id: str, finished_to_rerun: Sequence[int] = ()) -> int:
    """Clear the failed and upstream-failed task instances of the ended, failed run ``tx_id`` —
    like ``POST …/clearTaskInstances {"dag_run_id": …, "only_failed": true}`` — so the scheduler
    runs them again in the same run: the batches that did not finish, the merge, the notification
    and the finalizing leaf. Finished batches keep their success, but for those in
    ``finished_to_rerun`` (batch numbers whose parts are gone). Returns how many were cleared."""
    from airflow.api_fastapi.common.dagbag import get_dag_for_run
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == tx_id))
        if dag_run is None:
            raise RunNotResumable("its Airflow run no longer exists; request the export again")
        if dag_run.state != DagRunState.FAILED:
            raise RunNotResumable(f"its Airflow run is still {dag_run.state}; try again when it has ended")
        dag = get_dag_for_run(DBDagBag(), dag_run, session=session)
        cleared = {ti.id: ti for ti in dag.clear(run_id=tx_id, only_failed=True, dry_run=True, session=session)}
        if finished_to_rerun:
            markers = [(BATCH_TASK, batch_no - 1) for batch_no in finished_to_rerun]
            cleared.update({ti.id: ti for ti in dag.clear(task_ids=markers, run_id=tx_id, dry_run=True,
                                                          session=session)})  # fmt: skip
        clear_task_instances(list(cleared.values()), session, DagRunState.QUEUED)
        return len(cleared)


def is_admin(user: Any) -> bool:
    """Admins see every transaction. SimpleAuthManager: the ``admin`` role; other auth managers:
    whoever may change Airflow's configuration."""
    role = getattr(user, "role", None)
    if role is not None:
        return str(role).upper() == "ADMIN"
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_configuration(method="PUT", user=user))


class RunStarter:
    """Creates the Airflow runs of requested exports, one after another, from a thread of its own
    (the work itself runs in the :class:`RunMaker`'s process).

    Creating a run takes 20-35 ms of CPU here. Made inside the api-server, before it moved to the
    run maker, fifty requests at once spent 400 ms in it before the last one could answer; the run
    maker's process still takes a core the burst's answers could use on a small machine (not
    measured apart since). So a request hands its run over here and waits for it (:meth:`wait`) only
    while it is the one request in progress: alone, it answers once the run exists (or 503 when
    it could not be created), as before; in a burst it answers as soon as its header is recorded.
    The runs of a burst are created once its requests are answered (at most
    :attr:`DEFER_MAX_SECONDS` after each was handed over), in order. A run that then cannot be
    created ends its transaction FAILED, with the same message (the job's own failure handling).
    """

    #: How often a waiting request (or a deferred run) looks again.
    POLL_SECONDS = 0.005
    #: The longest a run waits for other requests to be answered before it is created anyway.
    DEFER_MAX_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0  # runs handed over and not created yet
        self._requests = 0  # requests between enter() and leave()
        self._waiting = 0  # requests waiting in wait() for their run

    def enter(self) -> None:
        with self._lock:
            self._requests += 1

    def leave(self) -> None:
        with self._lock:
            self._requests -= 1

    def busy(self) -> bool:
        """Other requests in progress, or other runs waiting to be created."""
        with self._lock:
            return self._requests > 1 or self._pending > 1

    def _answering(self) -> bool:
        """Requests in progress that are not waiting for their run."""
        with self._lock:
            return self._requests > self._waiting

    def submit(self, job: Callable[[], None]) -> Future[None]:
        with self._lock:
            if self._executor is None:  # one per process, made after the api-server forked
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="export-run-starter")
            self._pending += 1
        try:
            future = self._executor.submit(self._run, job, time.monotonic() + self.DEFER_MAX_SECONDS)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _run(self, job: Callable[[], None], deadline: float) -> None:
        # Answering requests goes first: a run created meanwhile would hold the interpreter lock
        # for milliseconds at a time while every request waits for it.
        while self._answering() and time.monotonic() < deadline:
            time.sleep(self.POLL_SECONDS)
        job()

    def _done(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    def wait(self, future: Future[None], timeout: float) -> bool:
        """Wait for ``future`` while this is the only request in progress, at most ``timeout``
        seconds; True when it is done (then ``future.exception()`` tells how it went)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
        try:
            while not future.done():
                left = deadline - time.monotonic()
                if left <= 0 or self.busy():
                    return False
                try:
                    future.exception(timeout=min(left, self.POLL_SECONDS))
                except TimeoutError:
                    continue
            return True
        finally:
            with self._lock:
                self._waiting -= 1


#: The run starter of this api-server process.
starter = RunStarter()
