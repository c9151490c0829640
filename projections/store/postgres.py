"""The read model in PostgreSQL (``LINKFLOW_VIEWS_URL=postgresql://...``), shared by instances.

Every instance folds the whole log and writes what it folded; rows only move forward (a row is
replaced only by one with a higher ``seq``), lines and node rows are keyed by what produced
them, and positions only grow, so two instances writing the same batch leave one copy. A
process that starts later reads the stored positions and the live runs in one snapshot and
folds on from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from projections.store import sql
from projections.store.base import (
    Page,
    ReadStore,
    StoredState,
    cost_groups_from_rows,
    line_from_row,
    page_of,
)
from projections.store.rows import Changes, CostGroup, ExecutionQuery, LineRow, Position

_LOCK_KEY = 0x4C494E4B  # "LINK": serialises schema changes between instances starting together


def _q(statement: str) -> str:
    return sql.numbered(statement)


class PostgresStore(ReadStore):
    def __init__(self, url: str) -> None:
        self.url = url
        host = url.split("@")[-1]
        self.url_for_humans = f"postgresql://{host}"
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            msg = "the read-model store is not open"
            raise RuntimeError(msg)
        return self._pool

    async def open(self, fingerprint: str) -> bool:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            for statement in sql.schema("postgresql"):
                await conn.execute(statement)
            found = await conn.fetchval(_q(sql.SELECT_META), "fingerprint")
            emptied = found is not None and found != fingerprint
            if emptied:
                await _drop_and_create(conn)
            await conn.execute(_q(sql.UPSERT_META), "fingerprint", fingerprint)
        return emptied

    async def attach(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def reset(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await _drop_and_create(conn)

    async def positions(self) -> dict[Position, int]:
        rows = await self.pool.fetch(sql.SELECT_POSITIONS)
        return {(r[0], int(r[1])): int(r[2]) for r in rows}

    async def live_states(self) -> list[bytes]:
        return [bytes(r[0]) for r in await self.pool.fetch(sql.SELECT_LIVE)]

    async def states(self, ids: Sequence[str]) -> dict[str, StoredState]:
        if not ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT id, seq, state, body FROM executions WHERE id = ANY($1::text[])", list(ids)
        )
        return {r[0]: StoredState(r[0], int(r[1]), bytes(r[2]), str(r[3])) for r in rows}

    async def write(self, changes: Changes) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if changes.executions:
                await conn.executemany(
                    _q(sql.UPSERT_EXECUTION), [sql.execution_params(r) for r in changes.executions.values()]
                )
            if changes.lines:
                await conn.executemany(
                    _q(sql.INSERT_LINE),
                    [sql.line_params(line) for line in changes.lines],
                )
            if changes.node_network:
                await conn.executemany(
                    _q(sql.UPSERT_NODE_NETWORK),
                    [sql.network_params(r) for r in changes.node_network],
                )
            if changes.positions:
                await conn.executemany(
                    _q(sql.UPSERT_POSITION), [(t, p, o) for (t, p), o in sorted(changes.positions.items())]
                )

    async def page(self, query: ExecutionQuery) -> Page:
        statement, params = sql.select_page(query)
        return page_of(await self.pool.fetch(_q(statement), *params), query.limit)

    async def lines(
        self, execution_id: str, *, floor: int, node_id: str | None, text: str | None, limit: int
    ) -> list[LineRow]:
        statement, params = sql.select_lines(
            execution_id, floor=floor, node_id=node_id, text=text, limit=limit
        )
        rows = await self.pool.fetch(_q(statement), *params)
        return [line_from_row(tuple(r), execution_id) for r in reversed(rows)]

    async def cost_groups(
        self, group_column: str, since_ms: int | None, team: str | None = None
    ) -> list[CostGroup]:
        params = [p for p in (since_ms, team) if p is not None]
        since, one_team = since_ms is not None, team is not None
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            groups = await conn.fetch(_q(sql.select_cost_groups(group_column, since, one_team)), *params)
            nodes = await conn.fetch(_q(sql.select_node_network(group_column, since, one_team)), *params)
        return cost_groups_from_rows([tuple(r) for r in groups], [tuple(r) for r in nodes])

    async def delete_finished_before(self, cutoff_ms: int, limit: int) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            ids = [r[0] for r in await conn.fetch(_q(sql.SELECT_EXPIRED), cutoff_ms, limit)]
            if ids:
                for table, column in (
                    ("log_lines", "execution_id"),
                    ("node_network", "execution_id"),
                    ("executions", "id"),
                ):
                    await conn.execute(f"DELETE FROM {table} WHERE {column} = ANY($1::text[])", ids)  # noqa: S608 - fixed names
        return len(ids)

    async def linked(self, execution_id: str) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(_q(sql.SELECT_LINKED), execution_id)
        return [(str(r[0]), str(r[1])) for r in rows]

    async def count(self) -> int:
        return int(await self.pool.fetchval(sql.COUNT_EXECUTIONS))

    async def dump(self) -> tuple[list[StoredState], list[LineRow]]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = [
                StoredState(r[0], int(r[1]), bytes(r[2]), str(r[3]), str(r[4]))
                for r in await conn.fetch(sql.SELECT_ALL_ROWS)
            ]
            lines = [
                line_from_row(tuple(r)[3:], r[0], int(r[1]), int(r[2]))
                for r in await conn.fetch(sql.SELECT_ALL_LINES)
            ]
        return rows, lines


async def _drop_and_create(conn: Any) -> None:
    for statement in sql.DROP:
        await conn.execute(statement)
    for statement in sql.schema("postgresql"):
        await conn.execute(statement)
