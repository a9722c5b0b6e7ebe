"""A whole export from MariaDB (a real server started for the session) through the connection's
hook: a YAML definition in the team's folder, the connection as ``AIRFLOW_CONN_<ID>``, several
batches planned by ``ROW_NUMBER()``, and a Parquet file equal to the source value by value."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_tx.catalog import registry
from export_tx.sources import DbApiSource
from export_tx.states import State
from tests.helpers import export_dag, local_path, run_export, store
from tests.mariadb import MariaDB, mariadb  # noqa: F401 - the session fixture

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")

ROWS = 4_321
SELECT = "id, amount, ratio, day, at, label, payload"
DEFINITION = """\
name: maria_ledger
description: Ledger rows from MariaDB, through the connection's hook.
connection: maria_ledger_src
sql: |
  SELECT id, amount, ratio, day, at, label, payload FROM ledger
  WHERE label <> :skip AND id >= :from_id
key_column: id
params:
  skip: {type: string, title: Label to leave out}
  from_id: {type: integer, title: First id}
required: [skip, from_id]
"""


@pytest.fixture(scope="module")
def ledger(mariadb: MariaDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:  # noqa: F811
    conn = mariadb.connect(autocommit=True)
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS ledger")
    cur.execute(
        "CREATE TABLE ledger (id BIGINT PRIMARY KEY, amount DECIMAL(38,10), ratio DOUBLE, day DATE, "
        "at DATETIME(6), label VARCHAR(40) CHARACTER SET utf8mb4, payload VARBINARY(20))"
    )
    # Values computed by the server from the sequence: large, negative, fractional, unicode, NULLs.
    cur.execute(
        "INSERT INTO ledger SELECT seq * 7, "
        "IF(seq % 11 = 0, NULL, (CAST(seq AS SIGNED) - 2000) * 1234567890123456789012.0123456789 / 7), "
        "IF(seq % 13 = 0, NULL, seq / 3e0), DATE_ADD('1970-01-01', INTERVAL seq * 5 DAY), "
        "DATE_ADD('2000-01-01 00:00:00.000001', INTERVAL seq * 1234567 MICROSECOND), "
        "IF(seq % 17 = 0, 'skip''me', CONCAT('é✓ ', seq, '\\n')), IF(seq % 5 = 0, NULL, UNHEX(SHA1(seq))) "
        f"FROM seq_1_to_{ROWS}"
    )
    conn.close()
    folder = tmp_path_factory.mktemp("maria_definitions")
    (folder / "maria_ledger.yaml").write_text(DEFINITION, encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_MARIA_LEDGER_SRC", mariadb.airflow_conn())
    mp.setenv("EXPORT_TX_DEFINITIONS_PATH", os.pathsep.join([os.environ["EXPORT_TX_DEFINITIONS_PATH"], str(folder)]))
    registry.clear_cache()
    export_dag.cache_clear()  # its definition Param lists the registered names
    try:
        yield mariadb
    finally:
        mp.undo()
        registry.clear_cache()
        export_dag.cache_clear()


def _source_rows(db: MariaDB, skip: str, from_id: int) -> list[dict[str, Any]]:
    """What the server holds, read by the test's own connection (not the product's path)."""
    conn = db.connect()
    cur = conn.cursor(dictionary=True)
    cur.execute(f"SELECT {SELECT} FROM ledger WHERE label <> %s AND id >= %s ORDER BY id", (skip, from_id))
    rows = list(cur.fetchall())
    conn.close()
    return [dict(r) for r in rows]  # type: ignore[arg-type]


def test_yaml_connection_to_mariadb_is_a_dbapi_source(ledger: MariaDB) -> None:
    definition = registry.get("maria_ledger")
    assert definition.source == DbApiSource("maria_ledger_src") and definition.source.dialect == "mysql"


def test_whole_export_equals_the_source_value_by_value(ledger: MariaDB) -> None:
    skip, from_id = "skip'me", 70
    expected = _source_rows(ledger, skip, from_id)
    assert 3_900 < len(expected) < ROWS
    run = run_export({"definition": "maria_ledger", "params": {"skip": skip, "from_id": from_id},
                      "batch_size": 1000})  # fmt: skip
    assert run.state == "success"
    header = store().get(run.run_id)
    assert header.state == State.SUCCEEDED, header.error
    assert header.batches_total == -(-len(expected) // 1000) >= 4 and header.result_rows == len(expected)
    table = pq.read_table(local_path(header.result_uri or ""))
    assert table.schema.field("amount").type == pa.decimal128(38, 10)
    assert table.schema.field("at").type == pa.timestamp("us")
    assert table.schema.field("payload").type == pa.binary()
    got = table.to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in expected]  # every row, in key order
    for row, want in zip(got, expected, strict=True):
        want = {**want, "payload": None if want["payload"] is None else bytes(want["payload"])}
        assert row == want, row["id"]
    amounts = [r["amount"] for r in got if r["amount"] is not None]
    assert min(amounts) < Decimal("-1e23") and max(amounts) > Decimal("1e23")
    assert any(r["amount"] is None for r in got) and any(r["payload"] is None for r in got)
    assert isinstance(got[0]["day"], dt.date) and "\n" in got[0]["label"]
