"""SQLite files (the embedded demo database, or another file) through the ADBC SQLite driver."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export_tx.errors import driver_message, is_transient
from export_tx.sources import adbc, snapshot
from export_tx.sources.base import PLACEHOLDER, Described, refuse, to_positional

if TYPE_CHECKING:
    import pyarrow as pa

    from export_tx.sources.postgres import PgBinding


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file; ``path=None`` means the embedded demo database."""

    path: str | None = None
    dialect: str = "sqlite"

    def uri(self) -> str:
        from export_tx.config import get_settings

        return str(self.path or get_settings().demo_db_path)

    def label(self) -> str:
        return f"SQLite file {self.path}" if self.path else "the embedded demo database"

    def unavailable(self) -> str | None:
        """Why this source cannot be read here, or None (a cheap check: nothing is opened)."""
        if Path(self.uri()).is_file():
            return None
        return f"{self.label()} does not exist here" + ("" if self.path else " (make demo creates it)")

    @contextmanager
    def stream(
        self, sql: str, params: Mapping[str, Any], binding: PgBinding | None = None
    ) -> Iterator[pa.RecordBatchReader]:
        import adbc_driver_sqlite

        snapshot.refuse_inside(self.label())
        text, positional = to_positional(sql, self.dialect, params)
        with adbc.connection(adbc_driver_sqlite.connect(self.uri())) as conn:
            with adbc.query(conn, text, adbc.bind_batch(positional) if positional else None) as reader:
                yield reader

    def describe(
        self,
        definition: str,
        sql: str,
        param_specs: Mapping[str, Mapping[str, Any]],
        values: Mapping[str, Any] | None = None,
    ) -> Described:
        return describe_sqlite(self, definition, sql)


def describe_sqlite(source: SqliteSource, definition: str, sql: str) -> Described:
    """The query's columns and their declared types, from a temporary view of it (placeholders
    read as NULL: a declared type never depends on a value). The source file is opened read-only."""
    import sqlite3
    from pathlib import Path

    path = Path(source.uri())
    if not path.exists():
        raise refuse(definition, "source", f"{source.label()} does not exist")
    text = PLACEHOLDER.sub("NULL", sql)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        try:
            conn.execute(f"CREATE TEMP VIEW export_tx_probe AS {text}")
            rows = conn.execute("PRAGMA temp.table_info(export_tx_probe)").fetchall()
        except sqlite3.Error as exc:
            if is_transient(exc) and "no such" not in str(exc) and "syntax" not in str(exc):
                raise
            raise refuse(definition, "sql", f"SQLite refuses the query: {driver_message(exc)}") from exc
    finally:
        conn.close()
    names = [str(r[1]) for r in rows]
    # A view renames a repeated column "id:1"; the query itself would return two "id" columns.
    for name in names:
        base, sep, suffix = name.rpartition(":")
        if sep and suffix.isdigit() and base in names:
            raise refuse(definition, "sql", f"the query returns more than one column named {base!r}; name each once")
    return Described(tuple((str(r[1]), str(r[2] or "")) for r in rows))
