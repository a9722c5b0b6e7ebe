"""The header store: transaction headers, their batch plan and their event log.

``tables`` (the schema), ``rows`` (what goes in and comes out), ``engine`` (connections) and
``header_store`` (:class:`HeaderStore`, every read and write). Import from here.
"""

from export_tx.errors import NotFound
from export_tx.store.engine import engine_for, store_url_from_connection
from export_tx.store.header_store import HeaderStore
from export_tx.store.rows import Batch, Event, Header, NewHeader, PlannedBatch, utcnow
from export_tx.store.tables import batches, events, headers, metadata

__all__ = [
    "Batch",
    "Event",
    "Header",
    "HeaderStore",
    "NewHeader",
    "NotFound",
    "PlannedBatch",
    "batches",
    "engine_for",
    "events",
    "headers",
    "metadata",
    "store_url_from_connection",
    "utcnow",
]
