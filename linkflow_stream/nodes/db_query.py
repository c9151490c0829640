"""What the ``db`` node asks of a database and what it gets back: a ``Query``, a ``QueryResult``,
and the ``Database`` protocol that each backend (``db_sqlite``, ``db_postgres``) implements."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from linkflow_stream.core.node_contract import NodeFailure

Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Query:
    """One statement to run, with its parameters already checked against the SQL."""

    sql: str
    """SQL in the dialect's own placeholder style (``:name`` for SQLite, ``$n`` for PostgreSQL)."""
    params: Mapping[str, Any]
    order: tuple[str, ...]
    """Parameter names in ``$1..$n`` order (PostgreSQL only)."""
    read_only: bool
    max_rows: int
    timeout_seconds: float

    @property
    def timeout_millis(self) -> int:
        """The timeout as the databases take it: whole milliseconds, at least 1, a 32-bit int."""
        return min(max(1, math.ceil(self.timeout_seconds * 1000)), 2**31 - 1)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def check_columns(name: str, columns: Sequence[str]) -> None:
    """Refuse a result with two columns of one name (a row object cannot hold both); raised
    before the transaction commits, so a failed write leaves nothing behind."""
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise NodeFailure(
            "validation",
            f"database {name!r}: the result has more than one column named "
            f"{', '.join(duplicates)}; give them distinct aliases",
        )


class Database(Protocol):
    dialect: Dialect

    async def run(self, query: Query) -> QueryResult: ...

    async def close(self) -> None: ...
