"""The read model in a SQLite file (the default: ``<data dir>/views.sqlite3``).

One writer thread owns the writing connection, so transactions never interleave; reads run on
their own threads with their own connections, which WAL mode lets proceed while a write
commits. ``synchronous=NORMAL`` under WAL keeps every commit atomic across a process crash (a
power cut may lose the last commits, rows and positions together, and the fold redoes them).

Checkpoints (copying the WAL's pages into the database file, with its two fsyncs) run off the
write path (ADR 0057): SQLite's own ran one in the writer's commit every 1000 pages, about every
100 runs under load, and every fold waiting to write waited for it. A thread of their own copies
the bulk while writes go on; the few pages written meanwhile are copied by the writer between two
writes, so the WAL is wholly copied and the next write starts it again from the beginning (a
checkpoint that only ever ran beside the writes never caught up: the WAL grew without end). A
reader holding a snapshot across that step (a long ``linkflow replay`` of the live file) or a
second engine writing the same file keeps the WAL from starting again until it lets go, as with
SQLite's own checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from linkflow_stream.core.errors import LinkflowError
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

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another process's write lock (two engines on one file)."""
CHECKPOINT_SECONDS = 1.0
"""How often, while writes come, the WAL is copied into the database file. Longer keeps the WAL
larger (a page written many times is copied once); it does not change what a crash keeps."""
WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""What the WAL file is cut back to when it starts again after a burst (``journal_size_limit``)."""


class SqliteStore(ReadStore):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url_for_humans = f"sqlite:///{path}"
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="views-write")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="views-read")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="views-checkpoint")
        self._checkpointing = False
        """A checkpoint runs (its thread's part or the writer's); set before it is submitted."""
        self._checkpointed_at = time.monotonic()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's work (``_checkpoint``)
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = job(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        result = await asyncio.get_running_loop().run_in_executor(self._writer, run)
        self._checkpoint_when_due()
        return result

    def _checkpoint_when_due(self) -> None:
        """Start a checkpoint on its own thread if the last one began ``CHECKPOINT_SECONDS`` ago
        and has ended; when it ends, the writer copies what was written meanwhile."""
        if self._checkpointing or time.monotonic() - self._checkpointed_at < CHECKPOINT_SECONDS:
            return
        self._checkpointed_at = time.monotonic()
        self._checkpointing = True
        try:
            self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # closing (a write that ended as the store closed): closing checkpoints
            self._checkpointing = False

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file beside the writes (PASSIVE: never waits for a
        lock), then hand the rest to the writer, which no write runs beside: after it, the whole
        WAL is in the file and the next write starts the WAL again."""
        handed = False
        try:
            if self._copy_wal():
                self._writer.submit(self._finish_checkpoint)
                handed = True
        except RuntimeError:
            pass  # closing: the writer takes no more work, and closing checkpoints
        finally:
            if not handed:
                self._checkpointing = False

    def _finish_checkpoint(self) -> None:
        """On the writer thread, between two writes: copy the pages written since ``_checkpoint``
        (fsyncing the WAL and the file again, for those pages only)."""
        try:
            self._copy_wal()
        finally:
            self._checkpointing = False

    def _copy_wal(self) -> bool:
        """One PASSIVE checkpoint on this thread's connection; False (logged) if it failed."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except Exception:
            log.exception("read model: checkpoint of %s failed (again in %gs)", self.path, CHECKPOINT_SECONDS)
            return False
        return True

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot for every statement of the job
            try:
                return job(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def open(self, fingerprint: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def create(conn: sqlite3.Connection) -> bool:
            for statement in sql.schema("sqlite"):
                conn.execute(statement)
            found = conn.execute(sql.SELECT_META, ("fingerprint",)).fetchone()
            emptied = found is not None and found[0] != fingerprint
            if emptied:
                _drop_and_create(conn)
            conn.execute(sql.UPSERT_META, ("fingerprint", fingerprint))
            return emptied

        return await self._write(create)

    async def attach(self) -> None:
        if not self.path.is_file():
            msg = f"no read model at {self.path}: has an engine with these settings run here?"
            raise LinkflowError(msg, error_type="not_found")

    async def close(self) -> None:
        self._checkpointer.shutdown(wait=True)  # before the writer: it hands its rest to the writer
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def reset(self) -> None:
        await self._write(_drop_and_create)

    async def positions(self) -> dict[Position, int]:
        rows = await self._read(lambda c: c.execute(sql.SELECT_POSITIONS).fetchall())
        return {(topic, int(part)): int(offset) for topic, part, offset in rows}

    async def live_states(self) -> list[bytes]:
        rows = await self._read(lambda c: c.execute(sql.SELECT_LIVE).fetchall())
        return [bytes(r[0]) for r in rows]

    async def states(self, ids: Sequence[str]) -> dict[str, StoredState]:
        if not ids:
            return {}

        def fetch(conn: sqlite3.Connection) -> list[tuple[str, int, bytes, str]]:
            out: list[tuple[str, int, bytes, str]] = []
            for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                out += conn.execute(sql.select_states(len(chunk)), chunk).fetchall()
            return out

        return {r[0]: StoredState(r[0], int(r[1]), bytes(r[2]), str(r[3])) for r in await self._read(fetch)}

    async def write(self, changes: Changes) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            if changes.executions:
                conn.executemany(
                    sql.UPSERT_EXECUTION, [sql.execution_params(r) for r in changes.executions.values()]
                )
            if changes.lines:
                conn.executemany(
                    sql.INSERT_LINE,
                    [sql.line_params(line) for line in changes.lines],
                )
            if changes.node_network:
                conn.executemany(
                    sql.UPSERT_NODE_NETWORK,
                    [sql.network_params(r) for r in changes.node_network],
                )
            if changes.positions:
                conn.executemany(sql.UPSERT_POSITION, [(t, p, o) for (t, p), o in changes.positions.items()])

        await self._write(apply)

    async def page(self, query: ExecutionQuery) -> Page:
        statement, params = sql.select_page(query)
        return page_of(await self._read(lambda c: c.execute(statement, params).fetchall()), query.limit)

    async def lines(
        self, execution_id: str, *, floor: int, node_id: str | None, text: str | None, limit: int
    ) -> list[LineRow]:
        statement, params = sql.select_lines(
            execution_id, floor=floor, node_id=node_id, text=text, limit=limit
        )
        rows = await self._read(lambda c: c.execute(statement, params).fetchall())
        return [line_from_row(tuple(r), execution_id) for r in reversed(rows)]

    async def cost_groups(
        self, group_column: str, since_ms: int | None, team: str | None = None
    ) -> list[CostGroup]:
        params = [p for p in (since_ms, team) if p is not None]
        since, one_team = since_ms is not None, team is not None

        def fetch(conn: sqlite3.Connection) -> list[CostGroup]:
            groups = conn.execute(sql.select_cost_groups(group_column, since, one_team), params).fetchall()
            nodes = conn.execute(sql.select_node_network(group_column, since, one_team), params).fetchall()
            return cost_groups_from_rows(groups, nodes)

        return await self._read(fetch)

    async def delete_finished_before(self, cutoff_ms: int, limit: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(sql.SELECT_EXPIRED, (cutoff_ms, limit)).fetchall()]
            if ids:
                for table, column in (
                    ("log_lines", "execution_id"),
                    ("node_network", "execution_id"),
                    ("executions", "id"),
                ):
                    conn.execute(sql.delete_by_ids(table, column, len(ids)), ids)
            return len(ids)

        return await self._write(delete)

    async def linked(self, execution_id: str) -> list[tuple[str, str]]:
        rows = await self._read(lambda c: c.execute(sql.SELECT_LINKED, (execution_id,)).fetchall())
        return [(str(kind), str(run)) for kind, run in rows]

    async def count(self) -> int:
        row = await self._read(lambda c: c.execute(sql.COUNT_EXECUTIONS).fetchone())
        return int(row[0])

    async def dump(self) -> tuple[list[StoredState], list[LineRow]]:
        def fetch(conn: sqlite3.Connection) -> tuple[list[StoredState], list[LineRow]]:
            rows = [
                StoredState(r[0], int(r[1]), bytes(r[2]), str(r[3]), str(r[4]))
                for r in conn.execute(sql.SELECT_ALL_ROWS)
            ]
            lines = [
                line_from_row(r[3:], r[0], int(r[1]), int(r[2])) for r in conn.execute(sql.SELECT_ALL_LINES)
            ]
            return rows, lines

        return await self._read(fetch)


def _drop_and_create(conn: sqlite3.Connection) -> None:
    for statement in sql.DROP:
        conn.execute(statement)
    for statement in sql.schema("sqlite"):
        conn.execute(statement)
