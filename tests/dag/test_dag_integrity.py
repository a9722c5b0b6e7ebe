"""The DAG file imports cleanly, does no work at parse time, and its Params are the contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from export_tx.catalog import registry

REPO = Path(__file__).resolve().parents[2]


def test_dag_parses_without_touching_any_database(tmp_path: Path) -> None:
    # Point every store at paths that do not exist: parsing must not create or open them.
    env = {
        **os.environ,
        "EXPORT_TX_STORE_URL": f"sqlite:///{tmp_path / 'nope' / 'store.db'}",
        "EXPORT_TX_DEMO_DB": str(tmp_path / "nope" / "demo.db"),
        "EXPORT_TX_STORAGE_URI": f"file://{tmp_path / 'nope' / 'exports'}",
    }
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r});"
        "assert not bag.import_errors, bag.import_errors;"
        "assert 'pandas' not in sys.modules and 'pyarrow.parquet' not in sys.modules, 'heavy import at parse';"
        "print(sorted(bag.dag_ids))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'export_transaction'" in result.stdout
    assert not (tmp_path / "nope").exists()


def test_params_are_the_run_conf_contract() -> None:
    from tests.helpers import export_dag

    dag = export_dag()
    params = dag.params
    assert set(params.keys()) == {
        "definition",
        "params",
        "batch_size",
        "notify_email",
        "notify_delay_minutes",
        "retention_days",
        "label",
        "format",
        "notify_webhook",
    }
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert params.get_param("definition").schema["enum"] == registry.names()
    assert params.get_param("batch_size").schema["minimum"] == 1_000
    assert params.get_param("format").schema["enum"] == ["parquet", "csv", "csv.gz", "jsonl", "jsonl.gz"]
    assert params["format"] == "parquet"


def test_tasks_retry_and_are_verbs() -> None:
    from tests.helpers import export_dag

    dag = export_dag()
    assert set(dag.task_ids) == {
        "begin_transaction",
        "hold_snapshot",
        "plan_batches",
        "export_batch",
        "merge_parts",
        "request_notification",
        "finalize_transaction",
    }
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
    assert dag.get_task("merge_parts").trigger_rule == "none_failed"
    assert dag.get_task("finalize_transaction").trigger_rule == "all_done"
    # The run's state follows the export's: the finalizing task is the only leaf that can fail (the
    # snapshot's holder never fails; for an ordinary export it has no instance at all).
    assert sorted(t.task_id for t in dag.leaves) == ["finalize_transaction", "hold_snapshot"]
    assert dag.get_task("hold_snapshot").upstream_task_ids == {"begin_transaction"}


def test_the_email_waits_in_a_dag_of_its_own() -> None:
    """A pending e-mail never holds an export's run open (nor its max_active_runs slot)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    notification = bag.dags["export_notification"]
    assert set(notification.task_ids) == {"wait_for_download_or_delay", "notify_requester", "deliver_webhook"}
    assert notification.get_task("wait_for_download_or_delay").deferrable is True
    # The webhook goes at once, beside the e-mail's wait (never after it), retried with backoff.
    hook = notification.get_task("deliver_webhook")
    assert hook.upstream_task_ids == set() and hook.retries >= 2 and hook.retry_exponential_backoff == 2.0
    assert notification.max_active_runs >= 100
    export = bag.dags["export_transaction"]
    assert export.get_task("request_notification").trigger_dag_id == "export_notification"
