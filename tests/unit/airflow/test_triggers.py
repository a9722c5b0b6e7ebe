"""The notification trigger: serialise round trip and its async run()."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from datetime import timedelta

from export_tx.airflow.triggers import DownloadOrDelayTrigger
from export_tx.store import HeaderStore, utcnow


def _tx() -> tuple[HeaderStore, str]:
    store = HeaderStore.from_settings()
    tx = f"trigger-{uuid.uuid4().hex}"
    store.create(tx, definition="demo_orders", params={}, batch_size=1000, requested_by="ana",
                 notify_email="ana@example.com")  # fmt: skip
    return store, tx


def test_serialize_round_trip() -> None:
    trigger = DownloadOrDelayTrigger("manual__2026-01-01T00:00:00+00:00", "2026-01-01T00:15:00+00:00", 2.5)
    path, kwargs = trigger.serialize()
    assert path == "export_tx.airflow.triggers.DownloadOrDelayTrigger"
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
    # A wait deferred before the upgrade is stored under the trigger's former path: it still loads.
    former = importlib.import_module("export_tx.notify").DownloadOrDelayTrigger(**kwargs)
    assert former.serialize() == (path, kwargs)
    assert kwargs == {"tx_id": "manual__2026-01-01T00:00:00+00:00", "deadline": "2026-01-01T00:15:00+00:00",
                      "poll_seconds": 2.5}  # fmt: skip


async def _first_event(trigger: DownloadOrDelayTrigger) -> dict[str, object]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("no event")


def test_fires_at_the_deadline_when_nobody_downloads() -> None:
    _store, tx = _tx()
    deadline = utcnow() + timedelta(seconds=0.6)
    trigger = DownloadOrDelayTrigger(tx, deadline.isoformat(), poll_seconds=0.1)
    event = asyncio.run(asyncio.wait_for(_first_event(trigger), timeout=10))
    assert event == {"tx_id": tx, "downloaded": False}
    assert utcnow() >= deadline


def test_fires_early_once_the_file_is_downloaded() -> None:
    store, tx = _tx()
    trigger = DownloadOrDelayTrigger(tx, (utcnow() + timedelta(hours=1)).isoformat(), poll_seconds=0.1)

    async def scenario() -> dict[str, object]:
        task = asyncio.create_task(_first_event(trigger))
        await asyncio.sleep(0.3)
        assert not task.done()  # still waiting: not downloaded, deadline far away
        await asyncio.to_thread(store.update, tx, downloaded_at=utcnow())
        return await asyncio.wait_for(task, timeout=5)

    event = asyncio.run(scenario())
    assert event["downloaded"] is True and event["tx_id"] == tx
    assert event["at"] == store.get(tx).downloaded_at.isoformat()  # type: ignore[union-attr]


def test_the_snapshot_trigger_serializes_round_trip() -> None:
    from export_tx.airflow.triggers import HoldSnapshotTrigger

    trigger = HoldSnapshotTrigger("exp_1", "export_source_pg", "2026-01-01T00:05:00+00:00", "2026-01-01T06:00:00+00:00",
                                  poll_seconds=2.0)  # fmt: skip
    path, kwargs = trigger.serialize()
    assert path == "export_tx.airflow.triggers.HoldSnapshotTrigger"
    module, name = path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (path, kwargs)
    assert kwargs == {"tx_id": "exp_1", "conn_id": "export_source_pg", "take_until": "2026-01-01T00:05:00+00:00",
                      "hold_until": "2026-01-01T06:00:00+00:00", "poll_seconds": 2.0}  # fmt: skip
