"""Headers of concurrent requests written together: one transaction for a burst.

Fifty requests at once each wrote their header in a transaction of its own. On SQLite these
queue for the one write lock, and each holder gives the interpreter lock away at every
statement to the other request threads and waits to get it back: the last header was written a
quarter of a second after the first. Here the first request that finds no write in progress
writes every header queued meanwhile, its own included, in one transaction
(:meth:`HeaderStore.create_many`), and goes on while headers keep coming; the others wait for
theirs. Alone, a request writes its own at once, as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from sqlalchemy import exc as sa_exc

from export_tx.store import Header, HeaderStore, NewHeader

#: The most headers written in one transaction.
BATCH_MAX = 100


class HeaderWriter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[HeaderStore, NewHeader, Future[tuple[Header, bool]]]] = []
        self._writing = False

    def create(self, store: HeaderStore, new: NewHeader) -> tuple[Header, bool]:
        """:meth:`HeaderStore.create` of ``new``, written with whatever else is queued."""
        future: Future[tuple[Header, bool]] = Future()
        with self._lock:
            self._queue.append((store, new, future))
            lead = not self._writing
            self._writing = True
        if lead:
            self._write_queued()
        return future.result()

    def _write_queued(self) -> None:
        try:
            while True:
                with self._lock:
                    batch, self._queue = self._queue[:BATCH_MAX], self._queue[BATCH_MAX:]
                    if not batch:
                        self._writing = False
                        return
                for store in {id(s): s for s, _, _ in batch}.values():
                    _write(store, [(n, f) for s, n, f in batch if s is store])
        except BaseException:
            with self._lock:
                self._writing = False
            raise


def _write(store: HeaderStore, items: list[tuple[NewHeader, Future[tuple[Header, bool]]]]) -> None:
    try:
        results = store.create_many([n for n, _ in items])
    except sa_exc.IntegrityError as exc:
        if len(items) == 1:
            items[0][1].set_exception(exc)
            return
        # A unique key taken (two requests with one Idempotency-Key): each on its own, so only
        # that one fails, as it would have alone.
        for item in items:
            _write(store, [item])
        return
    except Exception as exc:
        for _, future in items:
            future.set_exception(exc)
        return
    for (_, future), result in zip(items, results, strict=True):
        future.set_result(result)


#: The header writer of this api-server process.
writer = HeaderWriter()
