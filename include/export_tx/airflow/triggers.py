"""Triggers: waits that run in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from export_tx.store import HeaderStore, utcnow


class DownloadOrDelayTrigger(BaseTrigger):
    """Fires when the transaction's file is downloaded or when ``deadline`` passes."""

    def __init__(self, tx_id: str, deadline: str, poll_seconds: float = 15.0) -> None:
        super().__init__()
        self.tx_id = tx_id
        self.deadline = deadline
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"tx_id": self.tx_id, "deadline": self.deadline, "poll_seconds": self.poll_seconds},
        )

    def _downloaded_at(self) -> datetime | None:
        header = HeaderStore.from_settings().find(self.tx_id)
        return None if header is None else header.downloaded_at

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            downloaded = await asyncio.to_thread(self._downloaded_at)
            if downloaded is not None:
                yield TriggerEvent({"tx_id": self.tx_id, "downloaded": True, "at": downloaded.isoformat()})
                return
            remaining = (deadline - utcnow()).total_seconds()
            if remaining <= 0:
                yield TriggerEvent({"tx_id": self.tx_id, "downloaded": False})
                return
            await asyncio.sleep(min(self.poll_seconds, remaining))


class HoldSnapshotTrigger(BaseTrigger):
    """Holds a point-in-time export's snapshot of its PostgreSQL source (``conn_id``) open until the
    export no longer reads it: takes it, or takes over the one recorded (a re-run), and fires once,
    with the outcome, when the hold ends (:func:`export_tx.snapshots.hold`)."""

    def __init__(self, tx_id: str, conn_id: str, take_until: str, hold_until: str, poll_seconds: float = 2.0) -> None:
        super().__init__()
        self.tx_id = tx_id
        self.conn_id = conn_id
        self.take_until = take_until
        self.hold_until = hold_until
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "tx_id": self.tx_id,
                "conn_id": self.conn_id,
                "take_until": self.take_until,
                "hold_until": self.hold_until,
                "poll_seconds": self.poll_seconds,
            },  # fmt: skip
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from export_tx import snapshots

        async def uri() -> str:
            return await snapshots.connection_uri(self.conn_id)

        try:
            outcome = await snapshots.hold(
                self.tx_id,
                uri,
                poll_seconds=self.poll_seconds,
                take_until=datetime.fromisoformat(self.take_until),
                hold_until=datetime.fromisoformat(self.hold_until),
            )
        except Exception as exc:  # never fail the hold task: the export's own steps say what went wrong
            outcome = {"tx_id": self.tx_id, "outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:500]}
        yield TriggerEvent(outcome)
