"""``make demo`` as a new user runs it (``python -m devtools.stack demo``, in a folder of its
own): the demo's export succeeds for the analyst, its e-mail lands in the mail catcher, ``orders``
works on the local PostgreSQL, the printed ``analyst.env`` makes ``export-tx`` work, and ``down``
leaves nothing running."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
from email import policy
from pathlib import Path

import pytest

from tests.smtp import free_port

pytestmark = pytest.mark.stack


def test_make_demo_from_nothing(tmp_path: Path) -> None:
    home = tmp_path / "demo-airflow"
    # A new user's shell: none of the test session's Airflow or product settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EXPORT_TX"))}
    env.update(
        {
            "EXPORT_TX_DEMO_HOME": str(home),
            "EXPORT_TX_DEMO_PORT": str(free_port()),
            "EXPORT_TX_DEMO_SMTP_PORT": str(free_port()),
            "DEMO_ROWS": "20000",
        }
    )
    demo = [sys.executable, "-m", "devtools.stack"]
    try:
        run = subprocess.run([*demo, "demo"], env=env, capture_output=True, text=True, timeout=600)
        out = run.stdout
        assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
        assert re.search(r"^state\s+SUCCEEDED$", out, re.M), out
        assert re.search(r"^rows\s+20,000$", out, re.M), out
        assert "generated 100,000 orders" in out or "reusing 100,000 orders" in out, out
        token = re.search(r"^token\s+(\S+)$", out, re.M).group(1)  # type: ignore[union-attr]

        # The e-mail is visible: the mail catcher kept it, and the demo says where.
        mail_path = Path(re.search(r"^e-mail\s+(\S+\.eml)", out, re.M).group(1))  # type: ignore[union-attr]
        message = email.message_from_bytes(mail_path.read_bytes(), policy=policy.default)
        assert message["To"] == "analyst@example.com"
        assert message["Subject"] == "Your export demo_orders is ready (20,000 rows)"
        assert token in message.get_body(("plain", "html")).get_content()  # type: ignore[union-attr]

        # The CLI, ready from the printed env file: the demo's export belongs to the analyst.
        shell = f". {home / 'analyst.env'} && export-tx list && export-tx definitions"
        cli = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert token in cli.stdout and "SUCCEEDED" in cli.stdout
        assert "unavailable" not in cli.stdout  # orders works here: the local PostgreSQL has it
    finally:
        down = subprocess.run([*demo, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
    from devtools.stack import _processes_with_env

    # Every process of the demo stack (the mail catcher too) carries its home in its environment.
    assert _processes_with_env({f"EXPORT_TX_STACK_HOME={home}".encode()}) == [], "the demo outlived down"
