"""The read-model store every view writes through: one abstract surface, a SQLite and a
PostgreSQL implementation beside it (quix-streams' ``state/base`` next to its backends).

A store keeps rows and the log positions they were folded from, written in one database
transaction, so a crash leaves both or neither: a restart reads on from the stored positions
and never applies a record twice or skips one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projections.store.rows import Changes, CostGroup, Cursor, ExecutionQuery, LineRow, Position


@dataclass(frozen=True)
class StoredState:
    id: str
    seq: int
    state: bytes
    body: str
    """The rendered JSON body."""
    summary: str | None = None
    """The rendered summary (ADR 0051), where it was read (``dump``, which replay compares)."""


@dataclass(frozen=True)
class Page:
    bodies: list[str]
    """Rendered JSON bodies, newest first."""
    next_cursor: str | None


class ReadStore(ABC):
    """Where the views live. All methods are coroutines; a backend keeps blocking I/O off the
    event loop."""

    url_for_humans: str
    """Where it is, with no password (for logs and errors)."""

    @abstractmethod
    async def open(self, fingerprint: str) -> bool:
        """Create the tables if missing. ``fingerprint`` names what the rows were folded from
        (topics, schema version); a store holding another one is emptied first. True if it was."""

    @abstractmethod
    async def attach(self) -> None:
        """Open an existing store to read it as it is (replay's comparison), changing nothing."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def reset(self) -> None:
        """Forget everything: the next fold starts from offset 0."""

    @abstractmethod
    async def positions(self) -> dict[Position, int]:
        """The next offset to read, per (topic, partition) folded so far."""

    @abstractmethod
    async def live_states(self) -> list[bytes]:
        """The encoded states of every run that has not ended (accepted ones included)."""

    @abstractmethod
    async def states(self, ids: Sequence[str]) -> dict[str, StoredState]:
        """The stored rows of these runs, those that exist."""

    @abstractmethod
    async def write(self, changes: Changes) -> None:
        """Apply ``changes`` in one transaction: rows (only ever moved forward), lines, node rows
        and positions."""

    @abstractmethod
    async def page(self, query: ExecutionQuery) -> Page:
        """Runs newest first, filtered, from the cursor on."""

    @abstractmethod
    async def lines(
        self, execution_id: str, *, floor: int, node_id: str | None, text: str | None, limit: int
    ) -> list[LineRow]:
        """The last ``limit`` lines of a run at level ``floor`` or above, oldest first."""

    @abstractmethod
    async def cost_groups(
        self, group_column: str, since_ms: int | None, team: str | None = None
    ) -> list[CostGroup]:
        """Cost sums per workflow or team (of runs created since ``since_ms``, of ``team`` only
        when given), each with the node that moved the most bytes."""

    @abstractmethod
    async def delete_finished_before(self, cutoff_ms: int, limit: int) -> int:
        """Delete up to ``limit`` runs that ended before ``cutoff_ms``, with their lines; how many."""

    @abstractmethod
    async def linked(self, execution_id: str) -> list[tuple[str, str]]:
        """(link kind, run id) of every run that links to this one, oldest first."""

    @abstractmethod
    async def count(self) -> int: ...

    @abstractmethod
    async def dump(self) -> tuple[list[StoredState], list[LineRow]]:
        """Every row and line in key order, for comparing two stores (replay)."""


def page_of(rows: Sequence[Sequence[Any]], limit: int) -> Page:
    """A page from ``select_page``'s rows (body, created_ms, id), which fetch one more than the
    page to know whether another follows."""
    shown = rows[:limit]
    cursor = Cursor(int(shown[-1][1]), str(shown[-1][2])).encode() if len(rows) > limit and shown else None
    return Page([str(r[0]) for r in shown], cursor)


def line_from_row(row: Sequence[Any], execution_id: str = "", seq: int = 0, n: int = 0) -> LineRow:
    """A ``log_lines`` row (at, level, node_id, message, data) as a LineRow."""
    at, level, node_id, message, data = row
    return LineRow(
        execution_id=execution_id,
        seq=seq,
        n=n,
        at=str(at),
        level=int(level),
        node_id=None if node_id is None else str(node_id),
        message=str(message),
        data=None if data is None else str(data),
    )


def cost_groups_from_rows(groups: Sequence[Sequence[Any]], nodes: Sequence[Sequence[Any]]) -> list[CostGroup]:
    """Turn the two aggregate queries' rows into CostGroups (the same for every backend)."""
    top: dict[str, tuple[str, int]] = {}
    for key, node_id, size in nodes:
        best = top.get(str(key))
        if best is None or int(size) > best[1]:
            top[str(key)] = (str(node_id), int(size))
    out = []
    for row in groups:
        key, count, failed, total, attempts, retries, network, *parts = row
        out.append(
            CostGroup(
                key=str(key),
                executions=int(count),
                failed=int(failed or 0),
                total_cost=float(total or 0.0),
                attempts=int(attempts or 0),
                retries=int(retries or 0),
                network_bytes=int(network or 0),
                breakdown={
                    name: float(value or 0.0)
                    for name, value in zip(
                        ("attempts", "events", "compute", "cpu", "network"), parts, strict=True
                    )
                },
                top_network_node=top.get(str(key)),
            )
        )
    return out
