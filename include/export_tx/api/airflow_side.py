"""What the API asks of Airflow itself. Runs inside the api-server, which owns the metadata
database; these are the same internal calls its own REST routes make (pinned Airflow)."""

from __future__ import annotations

from typing import Any

from export_tx.settings import DAG_ID

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


def is_admin(user: Any) -> bool:
    """Admins see every transaction. SimpleAuthManager: the ``admin`` role; other auth managers:
    whoever may change Airflow's configuration."""
    role = getattr(user, "role", None)
    if role is not None:
        return str(role).upper() == "ADMIN"
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_configuration(method="PUT", user=user))
