"""Glue between Airflow's task context and the pipeline: who asked, how the run started, and
what each failing step records for the requester before Airflow sees it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from export_tx.errors import ExportError, TransactionClosed, is_transient, user_message
from export_tx.store import HeaderStore

log = logging.getLogger(__name__)


def requester(context: Any) -> str:
    """The Airflow user who triggered the run (schedules and tests have a fixed name)."""
    dag_run = context.get("dag_run")
    name = getattr(dag_run, "triggering_user_name", None) if dag_run is not None else None
    return str(name or "airflow")


def triggered_by(context: Any) -> str | None:
    """How the run was started: ``operator`` (by another DAG's trigger operator), else what Airflow
    says (``rest_api``, ``ui``, ``test``, or the run type ``manual``…)."""
    dag_run = context.get("dag_run")
    if dag_run is None:
        return None
    for attribute in ("run_type", "triggered_by"):  # a task sees run_type; dag.test's run has both
        kind = getattr(dag_run, attribute, None)
        value = None if kind is None else str(getattr(kind, "value", kind))
        if value in ("operator_triggered", "operator"):
            return "operator"
    kind = getattr(dag_run, "triggered_by", None) or getattr(dag_run, "run_type", None)
    return None if kind is None else str(getattr(kind, "value", kind))


def runs_in_process(context: Any) -> bool:
    """The task runs inside the caller's own process, as ``dag.test()`` runs every task (and a deferred
    task's trigger, inline, waiting for its event): there is no triggerer, and a thread the task
    starts outlives it. Known by the Task SDK's in-process supervisor; else by ``dag.test()``'s user."""
    try:
        from airflow.sdk.execution_time import task_runner

        comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    except ImportError:  # pragma: no cover - another Task SDK layout
        comms = None
    if comms is not None:
        return type(comms).__name__ == "InProcessSupervisorComms"
    dag_run = context.get("dag_run")
    return getattr(dag_run, "triggering_user_name", None) == "dag_test"


def _ended(store: Any, tx_id: str) -> bool:
    try:
        header = store.find(tx_id)
    except Exception:  # the store itself may be what failed: report as usual
        return False
    return header is not None and header.terminal


def give_way() -> None:
    """Lower this task process's CPU priority to ``EXPORT_TX_TASK_NICE`` (once; niceness only
    grows): its scheduler or worker (same session) goes first. Under autogroup scheduling that is
    all a niceness ranks; the api-server is favoured by CPU weights per service (README)."""
    import os

    from export_tx.config import task_nice

    wanted = task_nice()
    current = os.nice(0)
    if wanted > current:
        os.nice(wanted - current)


@contextmanager
def transaction_step(what: str) -> Iterator[tuple[HeaderStore, str]]:
    """The preamble of every task of an export's run: its store and transaction id (the run id),
    with failures reported by :func:`reporting` under ``what``."""
    from airflow.sdk import get_current_context

    give_way()
    context = get_current_context()
    tx_id, store = context["run_id"], HeaderStore.from_settings()
    with reporting(store, tx_id, what, context):
        yield store, tx_id


@contextmanager
def reporting(store: Any, tx_id: str, what: str, context: Any) -> Iterator[None]:
    """Log a failing step in the transaction's event log before Airflow sees it.

    An :class:`ExportError` (bad request, definition, limit, integrity) and any failure that would
    happen again (bad SQL, a type error, a value out of range: :func:`is_transient`) are final:
    they fail the task without retries. Transient ones (connections, timeouts, locks, storage) are
    retried by Airflow; each failed attempt is logged, and the last one is logged as the error
    the FAILED header will show.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        yield
    except TransactionClosed as exc:
        raise AirflowSkipException(str(exc)) from exc
    except Exception as exc:
        ended = _ended(store, tx_id)
        if ended and not isinstance(exc, ExportError):
            # Cancelled (or failed) meanwhile: what this task hit is no news for the requester, and
            # nothing is written to the log after its terminal state.
            raise AirflowSkipException(f"the transaction ended while this step ran ({type(exc).__name__})") from exc
        ti = context.get("ti")
        try_number = int(getattr(ti, "try_number", 1) or 1)
        max_tries = int(getattr(ti, "max_tries", 0) or 0)
        deterministic = not is_transient(exc)
        final = deterministic or try_number > max_tries
        message = user_message(what, exc)
        try:
            if ended:
                pass  # the step ended the transaction itself (a refused request): its header says why
            elif final:
                store.add_event(tx_id, "error", message, {"try": try_number})
            else:
                store.add_event(
                    tx_id, "retry", f"{message}; attempt {try_number} of {max_tries + 1}, retrying", {"try": try_number}
                )
        except Exception:  # the store itself may be what failed
            log.exception("could not record the failure in the event log")
        if deterministic:
            raise AirflowFailException(message) from exc
        raise
