"""A real HTTP server on loopback that receives webhooks: it records every request (method, path,
headers, raw body) and answers each from a programmable list of status codes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """``answers``: the status of each request in turn (``[503, 503, 200]``); once used up, the
    last one again. A 3xx answer carries a ``Location`` to ``redirect_to``."""

    def __init__(self, answers: list[int] | None = None, redirect_to: str = "http://127.0.0.1:9/elsewhere") -> None:
        self.answers = list(answers or [200])
        self.redirect_to = redirect_to
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received("POST", self.path, dict(self.headers.items()), body))
                    n = len(receiver.received)
                    code = receiver.answers[min(n, len(receiver.answers)) - 1]
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/exports"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def webhook_receiver(answers: list[int] | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(answers).start()
    try:
        yield receiver
    finally:
        receiver.stop()
