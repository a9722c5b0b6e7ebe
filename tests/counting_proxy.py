"""A TCP proxy on loopback in front of an HTTP server, for download tests: it asks for
``Connection: close`` (so each request has a connection of its own), records every exchange —
the request's method, path and headers, the answer's status and how many bytes of its body reached
the client — and, on cue, cuts an answer after a given number of body bytes, as a dropped
connection would."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.deploy import read_request_head, with_connection_close


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]  # the request's, names in lower case
    status: int = 0
    body_bytes: int = 0  # of the answer, as the client received them
    cut: bool = False
    done: threading.Event = field(default_factory=threading.Event)


Match = Callable[[Exchange], bool]


class CountingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cuts: list[tuple[Match, int]] = []
        self.exchanges: list[Exchange] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="counting-proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_next(self, match: Match, after_body_bytes: int) -> None:
        """Cut the next answer whose request ``match`` accepts once that many body bytes are through."""
        with self._lock:
            self._cuts.append((match, after_body_bytes))

    def matching(self, match: Match) -> list[Exchange]:
        with self._lock:
            found = [e for e in self.exchanges if match(e)]
        for e in found:
            e.done.wait(30)
        return found

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        exchange = None
        try:
            data = read_request_head(client)
            if data is None:
                return
            lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            method, path = (lines[0].split(b" ") + [b"", b""])[:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            exchange = Exchange(method.decode("latin-1"), path.decode("latin-1"), headers)
            with self._lock:
                self.exchanges.append(exchange)
                cut = next(((m, n) for m, n in self._cuts if m(exchange)), None)
                if cut is not None:
                    self._cuts.remove(cut)
            self._forward(client, with_connection_close(data), exchange, None if cut is None else cut[1])
        finally:
            client.close()
            if exchange is not None:
                exchange.done.set()

    def _forward(self, client: socket.socket, first: bytes, exchange: Exchange, cut_after: int | None) -> None:
        upstream = socket.create_connection(self.upstream, 10)
        try:
            upstream.sendall(first)

            def pump() -> None:  # a request's body
                try:
                    while chunk := client.recv(65536):
                        upstream.sendall(chunk)
                except OSError:
                    pass

            threading.Thread(target=pump, daemon=True).start()
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = upstream.recv(65536)
                if not chunk:
                    client.sendall(head)
                    return
                head += chunk
            head, body = head.split(b"\r\n\r\n", 1)
            exchange.status = int(head.split(b" ", 2)[1])
            client.sendall(head + b"\r\n\r\n")
            while True:
                if cut_after is not None and exchange.body_bytes + len(body) >= cut_after:
                    body = body[: cut_after - exchange.body_bytes]
                    client.sendall(body)
                    exchange.body_bytes += len(body)
                    exchange.cut = True
                    client.shutdown(socket.SHUT_WR)  # what was sent arrives, then the end
                    return
                client.sendall(body)
                exchange.body_bytes += len(body)
                body = upstream.recv(65536)
                if not body:
                    return
        except OSError:
            pass
        finally:
            upstream.close()
