"""The durable read model: rows the views fold into, with the log positions they came from.

``open_store`` picks the backend: PostgreSQL when ``LINKFLOW_VIEWS_URL`` names one (several
instances then share one read model), else a SQLite file under the data dir.
"""

from __future__ import annotations

from pathlib import Path

from linkflow_stream.core.errors import LinkflowError
from projections.store.base import Page, ReadStore, StoredState
from projections.store.rows import (
    Changes,
    CostGroup,
    Cursor,
    ExecutionQuery,
    ExecutionRow,
    LineRow,
    NodeNetworkRow,
    Position,
)


def open_store(url: str | None, data_dir: Path, name: str = "views") -> ReadStore:
    """The store for ``url`` (``postgresql://...`` or ``sqlite:///path``), or
    ``<data_dir>/<name>.sqlite3`` when none is given."""
    if url is None or not url.strip():
        from projections.store.sqlite import SqliteStore

        return SqliteStore(data_dir / f"{name}.sqlite3")
    if url.startswith(("postgresql://", "postgres://")):
        from projections.store.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        from projections.store.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    msg = "LINKFLOW_VIEWS_URL must start with postgresql:// or sqlite:///"
    raise LinkflowError(msg, error_type="config")


__all__ = [
    "Changes",
    "CostGroup",
    "Cursor",
    "ExecutionQuery",
    "ExecutionRow",
    "LineRow",
    "NodeNetworkRow",
    "Page",
    "Position",
    "ReadStore",
    "StoredState",
    "open_store",
]
