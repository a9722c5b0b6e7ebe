"""An export's task gives way to the deployment's own processes: its CPU priority drops to
EXPORT_TX_TASK_NICE (in a process of its own here: niceness never goes back up)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "from export_tx.airflow.context import give_way; give_way(); give_way(); import os; print(os.nice(0))"


@pytest.mark.parametrize(("setting", "expected"), [(None, 10), ("3", 3), ("25", 19), ("none", 10)])
def test_a_task_lowers_its_priority_once(setting: str | None, expected: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EXPORT_TX_TASK_NICE"}
    if setting is not None:
        env["EXPORT_TX_TASK_NICE"] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout.strip()) == max(expected, os.nice(0))  # never raised back up
