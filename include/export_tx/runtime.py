"""Glue between Airflow's task context and the pipeline: who, which run, what to tell the user."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from export_tx.errors import ExportError, TransactionClosed, driver_message, is_transient, sqlstate

log = logging.getLogger(__name__)

_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def requester(context: Any) -> str:
    """The Airflow user who triggered the run (schedules and tests have a fixed name)."""
    dag_run = context.get("dag_run")
    name = getattr(dag_run, "triggering_user_name", None) if dag_run is not None else None
    return str(name or "airflow")


def user_message(what: str, exc: BaseException, *, retries: bool = True) -> str:
    """A message safe to show the requester: no stack trace, no credentials; and whether it is
    worth waiting for a retry."""
    if isinstance(exc, ExportError):
        return f"{what}: {exc}"
    code = sqlstate(exc)
    if code is not None or str(exc).startswith(("[libpq]", "[SQLite]")):
        first_line = driver_message(exc) + (f" (SQLSTATE {code})" if code else "")
    else:
        first_line = (str(exc).strip().splitlines() or [""])[0]
    first_line = _CREDENTIALS.sub(r"\1***@", first_line)[:300]
    detail = f": {first_line}" if first_line else ""
    if not retries:
        return f"{what} failed ({type(exc).__name__}{detail})"
    if not is_transient(exc):
        return f"{what} failed ({type(exc).__name__}{detail}); not retried: it would fail the same way again"
    return f"{what} failed ({type(exc).__name__}{detail}); the Airflow task log has the details"


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
        ti = context.get("ti")
        try_number = int(getattr(ti, "try_number", 1) or 1)
        max_tries = int(getattr(ti, "max_tries", 0) or 0)
        deterministic = not is_transient(exc)
        final = deterministic or try_number > max_tries
        message = user_message(what, exc)
        try:
            if final:
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
