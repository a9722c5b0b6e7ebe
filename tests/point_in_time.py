"""A source table that changes while it is exported, for the DAG and end-to-end tests of point-in-time
exports (a definition's ``consistent_snapshot``).

``pit_accounts`` holds 3,000 rows (ids 10, 20, …, 30,000). Two definitions read it — ``pit_as_of``
(point-in-time) and ``pit_live`` (not) — with a batch hook: their transform, run by the first batch to
read rows, changes the table once (in every batch's key range: rows updated, deleted and inserted) and
commits at once, then records which key it saw and when. With batches run one after the other (as
``dag.test()`` does, or a pool of one slot), every later batch reads after the change: a live export
mixes two moments; a point-in-time one must not.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

TABLE = "pit_accounts"
ROWS = 3_000
BATCH_SIZE = 1_000
AS_OF, LIVE = "pit_as_of", "pit_live"
#: The environment variable the hook reads the source's DSN from (set for dag.test and for the stack).
DSN_VARIABLE = "EXPORT_TX_TEST_PIT_DSN"
CONN_ID = "pit_source"

#: What the hook does, once: changes in each third of the keys, committed together.
CHANGES = (
    "UPDATE pit_accounts SET balance = balance + 1000000, note = 'changed while exporting' "
    "WHERE id IN (50, 15050, 29050); "
    "DELETE FROM pit_accounts WHERE id IN (10010, 20010); "
    "INSERT INTO pit_accounts VALUES (5005, 1.25, 'inserted while exporting'), "
    "(25005, 2.50, 'inserted while exporting'), (30010, 3.75, 'inserted while exporting')"
)

_DEFINITION = '''"""A test definition over pit_accounts: its transform changes the table once."""

import os

from export_tx.definition import ExportDefinition
from export_tx.sources import PostgresSource


def change_once(batch):
    """The first batch to read rows changes the table, once, and commits at once."""
    if batch.num_rows:
        import psycopg

        with psycopg.connect(os.environ[{dsn_variable!r}], autocommit=True) as conn, conn.transaction():
            first = batch.column(0)[0].as_py()
            fired = conn.execute(
                "UPDATE pit_control SET fired_at = clock_timestamp(), fired_key = %s WHERE fired_at IS NULL "
                "RETURNING 1",
                (first,),
            ).fetchone()
            if fired:
                conn.execute({changes!r})
    return batch


DEFINITION = ExportDefinition(
    name={name!r},
    description="Accounts, changed by the first batch that reads them.",
    source=PostgresSource({conn_id!r}),
    sql="SELECT id, balance, note FROM pit_accounts",
    key_column="id",
    transform=change_once,
    consistent_snapshot={snapshot!r},
)
'''


def write_definitions(folder: Path) -> None:
    for name, snapshot in ((AS_OF, True), (LIVE, False)):
        text = _DEFINITION.format(dsn_variable=DSN_VARIABLE, changes=CHANGES, name=name, conn_id=CONN_ID,
                                  snapshot=snapshot)  # fmt: skip
        (folder / f"{name}.py").write_text(text, encoding="utf-8")


def reset(dsn: str) -> list[tuple[Any, ...]]:
    """The table as before any export (values computed by PostgreSQL), the hook armed; its rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS pit_accounts; DROP TABLE IF EXISTS pit_control; "
            "CREATE TABLE pit_accounts (id integer PRIMARY KEY, balance numeric(12, 2) NOT NULL, note text); "
            "CREATE TABLE pit_control (fired_at timestamptz, fired_key integer); "
            "INSERT INTO pit_control VALUES (NULL, NULL)"
        )
        conn.execute(
            "INSERT INTO pit_accounts SELECT g * 10, round((g * 7919 %% 100000) / 100.0, 2), "
            "CASE WHEN g %% 3 = 0 THEN NULL ELSE 'account ' || g END FROM generate_series(1, %s) g",
            (ROWS,),
        )
    return rows(dsn)


def rows(dsn: str) -> list[tuple[Any, ...]]:
    """The table as it is now, read by the test's own connection (not the product's path)."""
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute("SELECT id, balance, note FROM pit_accounts ORDER BY id")]


def fired(dsn: str) -> tuple[datetime, int]:
    """When the hook changed the table, and the first key of the batch that did it."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT fired_at, fired_key FROM pit_control").fetchone()
    assert row is not None and row[0] is not None, "the hook never ran"
    return row[0], int(row[1])


def firing_batch(plan: list[Any], key: int) -> Any:
    """The planned batch whose range holds ``key``."""
    return next(b for b in plan if b.lo <= key and (b.hi is None or key < b.hi))


def mixed(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], lo: int, hi: int | None
) -> list[tuple[Any, ...]]:
    """What a live export reads when the batch over [lo, hi) read ``before`` and every other ``after``."""

    def inside(row: tuple[Any, ...]) -> bool:
        return bool(lo <= row[0] and (hi is None or row[0] < hi))

    return sorted([r for r in before if inside(r)] + [r for r in after if not inside(r)])
