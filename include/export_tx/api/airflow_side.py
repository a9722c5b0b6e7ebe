"""What the API asks of Airflow itself. Runs inside the api-server, which owns the metadata
database; these are the same internal calls its own REST routes make (pinned Airflow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from export_tx.config import DAG_ID

#: The export DAG's only leaf (``dags/export_transaction.py``): the run's state follows it.
FINALIZE_TASK = "finalize_transaction"


def trigger_run(tx_id: str, conf: dict[str, Any], user_name: str, dag_id: str = DAG_ID) -> None:
    """Create the run ``tx_id`` of ``dag_id`` (no logical date), exactly like ``POST …/dagRuns``."""
    import time

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
    import time

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
    """Creates the Airflow runs of requested exports, one after another, in a thread of its own.

    Creating a run is Airflow's own code path (the serialized DAG, its params checked, a task
    instance per task, a commit to the metadata database): ~8 ms of CPU, all of it under the
    api-server's one interpreter lock. Fifty requests at once spent 400 ms in it before the last
    one could answer. So a request hands its run over here and waits for it (:meth:`wait`) only
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
