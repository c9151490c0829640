"""The SQLite read model copies its WAL into the database file off the write path (ADR 0057), and
the WAL starts again from the beginning while writes keep coming: it stays small, and the
database file alone holds what was written a checkpoint ago. A real SQLite file, no broker."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from projections.store import sqlite as sqlite_store
from projections.store.rows import Changes, ExecutionRow
from projections.store.sqlite import SqliteStore

PAGE = 4096


def row(n: int) -> ExecutionRow:
    return ExecutionRow(
        id=f"run-{n:05d}",
        workflow_id="wf",
        workflow_version=1,
        team="",
        status="success",
        priority="normal",
        created_ms=1_800_000_000_000 + n,
        finished_ms=1_800_000_000_000 + n,
        seq=3,
        state=bytes(600),
        body="x" * 3000,  # about a page a row, so the WAL grows by pages a write
        summary="{}",
        total_cost=0.0,
        attempts=1,
        retries=0,
        network_bytes=0,
        cost_attempts=0.0,
        cost_events=0.0,
        cost_compute=0.0,
        cost_cpu=0.0,
        cost_network=0.0,
    )


def wal_pages(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size // PAGE if wal.exists() else 0


async def settled(store: SqliteStore) -> None:
    for _ in range(500):
        if not store._checkpointing:  # the store's own flag: no checkpoint under way
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the checkpoint never finished")


async def test_under_steady_writes_the_wal_is_copied_into_the_file_and_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_SECONDS", 0.05)
    path = tmp_path / "views.sqlite3"
    store = SqliteStore(path)
    await store.open("test")
    writes, largest = 0, 0
    until = time.monotonic() + 1.5
    while time.monotonic() < until:  # one write after another, as a fold under load writes
        await store.write(
            Changes(executions={f"run-{writes:05d}": row(writes)}, positions={("events", 0): writes + 1})
        )
        writes += 1
        largest = max(largest, wal_pages(path))
        await asyncio.sleep(0)
    # Each write adds about eleven pages to the WAL (the row, its indexes, the position): a WAL
    # never started again would be ten times as long as there were writes (64,000 pages without
    # the writer's step). Checkpoints copied it and the writes started it over, many times (its
    # file never shrinks below the largest it was). Under a full CI suite's load the checkpoint
    # thread lags: 1.6 pages a write was seen, hence 3.
    assert largest < 3 * writes, f"the WAL grew to {largest} pages over {writes} writes"

    # The database file alone, without its WAL, holds the rows written before the last
    # checkpoints: they were copied into it while the writes went on.
    await settled(store)  # a copy taken while a checkpoint writes the file could be torn
    alone = tmp_path / "alone.sqlite3"
    shutil.copyfile(path, alone)
    with sqlite3.connect(alone) as conn:
        copied = conn.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    assert copied >= writes // 2, f"only {copied} of {writes} rows reached the database file"

    await store.close()
    reopened = SqliteStore(path)
    await reopened.open("test")
    assert await reopened.count() == writes
    assert await reopened.positions() == {("events", 0): writes}
    await reopened.close()


async def test_a_write_does_not_wait_for_a_checkpoint_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint held up on its own thread (a slow disk's fsync) holds up no write; when it
    goes on, the writer copies the rest and the WAL starts again."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_SECONDS", 0.0)
    store = SqliteStore(tmp_path / "views.sqlite3")
    await store.open("test")
    await settled(store)  # the checkpoint after the tables were made
    held, started = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    copy = store._checkpoint  # its own thread's part is what is held up

    def slow_checkpoint() -> None:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(held.wait(), loop).result()
        copy()

    monkeypatch.setattr(store, "_checkpoint", slow_checkpoint)
    try:
        await store.write(Changes(executions={"run-00000": row(0)}))  # starts the checkpoint
        await asyncio.wait_for(started.wait(), 5)
        for n in range(1, 21):  # while it is held up
            await asyncio.wait_for(store.write(Changes(executions={f"run-{n:05d}": row(n)})), 5)
        assert store._checkpointing  # still held up: the writes did not wait for it
    finally:
        held.set()  # never leave the checkpoint's thread blocked (the test run would hang)
    await settled(store)
    assert await store.count() == 21
    await store.close()
