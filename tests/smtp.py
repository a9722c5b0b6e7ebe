"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import email
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Mail:
    to: list[str]
    sender: str
    subject: str
    body: str
    received_at: datetime


@dataclass
class Collector:
    messages: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        part = msg.get_body(preferencelist=("html", "plain"))
        body = part.get_content() if part is not None else ""
        with self.lock:
            self.messages.append(
                Mail(list(envelope.rcpt_tos), envelope.mail_from, str(msg["subject"]), body, datetime.now(UTC))
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.messages if address in m.to]

    def wait_for(self, address: str, timeout: float = 60) -> Mail:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(address)
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no e-mail to {address} within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.collector = Collector()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.collector, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def connection_json(self) -> str:
        import json

        return json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": self.port,
                # A plain local server: no implicit SSL, no STARTTLS; fail fast when it is down.
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 5,
                    "retry_limit": 1,
                    "from_email": "exports@example.com",
                },
            }
        )
