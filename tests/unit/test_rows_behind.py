"""ADR 0063: a live run's row waits (at most the row delay) and an ended run's is written at once;
the stored positions stay at the first record a row behind does not hold, so a crash before the
rows are written loses nothing. A real SQLite store; records built in memory (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkflow_stream.core.state import ExecutionState
from projections.read_model import ReadModel
from projections.store import Changes, ExecutionQuery, ExecutionRow, ReadStore, open_store
from projections.store.sqlite import SqliteStore
from tests.unit.test_read_model import CODEC, TOPICS, Log, decided, result, start


class CountingStore(SqliteStore):
    """Counts the rows each write brings, by run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.rows: dict[str, int] = {}

    async def write(self, changes: Changes) -> None:
        for run in changes.executions:
            self.rows[run] = self.rows.get(run, 0) + 1
        await super().write(changes)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(tmp_path / "views.sqlite3")
    await store.open("test")
    yield store
    await store.close()


async def stored_seq(store: ReadStore, run: str) -> int | None:
    row = (await store.states([run])).get(run)
    return None if row is None else row.seq


async def test_a_quick_runs_row_is_written_once_when_it_ends(store: CountingStore) -> None:
    """Its request and events come in three batches; its row is rendered and written once, with
    the positions past all of them. With no delay, at every batch (the behaviour before)."""
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    state, events = decided(None, start("quick"), 0)
    _, ended = decided(state, result("quick", ok=True), 1)
    await model.fold(log.records("requests.normal", [start("quick")]))
    await model.fold(log.records("events", events))
    assert await stored_seq(store, "quick") is None, "live: its row waits"
    assert await store.positions() == {("requests.normal", 0): 0, ("events", 0): 0}
    await model.fold(log.records("events", ended))
    assert store.rows == {"quick": 1}
    assert await stored_seq(store, "quick") == state.seq + len(ended)
    assert await store.positions() == {("requests.normal", 0): 1, ("events", 0): len(events) + len(ended)}

    eager = ReadModel(store, CODEC, TOPICS, row_delay=0)
    state, events = decided(None, start("eager"), 0)
    _, ended = decided(state, result("eager", ok=True), 1)
    await eager.fold(log.records("requests.normal", [start("eager")]))
    await eager.fold(log.records("events", events))
    assert await stored_seq(store, "eager") == state.seq, "no delay: written at once"
    await eager.fold(log.records("events", ended))
    assert store.rows["eager"] == 3


async def test_a_live_run_is_written_once_its_row_has_waited_the_delay(store: CountingStore) -> None:
    """By the next batch, whatever run it brings, or by ``flush(every=False)`` when no batch comes
    (a run that waits for a signal or a timer for hours)."""
    now = [100.0]
    log = Log()
    model = ReadModel(store, CODEC, TOPICS, clock=lambda: now[0], row_delay=1.0)
    waiting, events = decided(None, start("waiting"), 0)
    await model.fold(log.records("events", events))
    await model.flush(every=False)
    assert await stored_seq(store, "waiting") is None, "not yet due"
    now[0] += 1.0
    _, other = decided(None, start("other"), 0)
    await model.fold(log.records("events", other))
    assert await stored_seq(store, "waiting") == waiting.seq, "due: written with the next batch"
    assert await stored_seq(store, "other") is None
    assert await store.positions() == {("events", 0): len(events)}, "held at other's first record"
    now[0] += 1.0
    await model.flush(every=False)
    assert await stored_seq(store, "other") is not None, "due: written with no batch at all"
    assert await store.positions() == {("events", 0): len(events) + len(other)}


async def test_a_page_of_runs_lists_a_live_run_folded_a_moment_ago(store: CountingStore) -> None:
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    await model.fold(log.records("requests.normal", [start("pending")]))
    state, events = decided(None, start("running"), 0)
    await model.fold(log.records("events", events))
    rows, _ = await model.page(ExecutionQuery(limit=10))
    assert sorted(row for row in rows if '"pending"' in row or '"running"' in row) == sorted(rows)
    assert len(rows) == 2, "both listed, though neither row had waited the delay"
    assert await stored_seq(store, "running") == state.seq


async def test_a_crash_before_the_rows_behind_are_written_loses_nothing(tmp_path: Path) -> None:
    """The restart reads on from the held positions: the live runs come back as they were, the
    ended one is not folded twice, and the store ends as a store that was never stopped."""
    log = Log()
    first = open_store(None, tmp_path / "crashed")
    await first.open("test")
    model = ReadModel(first, CODEC, TOPICS)
    done, events_done = decided(None, start("done"), 0)
    _, ended = decided(done, result("done", ok=True), 1)
    running, events_running = decided(None, start("running"), 2)
    records = log.records("events", [*events_done, *events_running, *ended])
    requests = log.records("requests.normal", [start("queued", 3)])
    await model.fold(records)
    await model.fold(requests)
    await first.close()  # the crash: no flush

    again = open_store(None, tmp_path / "crashed")
    await again.open("test")
    restarted = ReadModel(again, CODEC, TOPICS)
    positions = await restarted.load()
    assert positions == {("events", 0): len(events_done), ("requests.normal", 0): 0}, (
        "at the first record of each run whose row was behind"
    )
    assert await stored_seq(again, "done") == done.seq + len(ended)
    assert await stored_seq(again, "running") is None and not restarted.status.executions
    await restarted.fold(records[positions[("events", 0)] :])  # what the reader reads on from there
    await restarted.fold(requests[positions[("requests.normal", 0)] :])
    assert set(restarted.status.executions) == {"running"} and set(restarted.status.accepted) == {"queued"}
    assert restarted.status.executions["running"].seq == running.seq
    await restarted.flush()

    never = open_store(None, tmp_path / "never-stopped")
    await never.open("test")
    steady = ReadModel(never, CODEC, TOPICS, row_delay=0)
    await steady.fold(records)
    await steady.fold(requests)
    assert await again.dump() == await never.dump()
    assert await again.positions() == await never.positions()
    await again.close()
    await never.close()


async def test_a_flush_whose_waiter_is_cancelled_still_writes_its_rows(tmp_path: Path) -> None:
    """A page read whose caller went away, or a stop that timed out: the rows taken off the list
    behind are written all the same (else the positions would move past them)."""

    class Slow(SqliteStore):
        gate = asyncio.Event()

        async def write(self, changes: Changes) -> None:
            if changes.executions:
                await self.gate.wait()
            await super().write(changes)

    store = Slow(tmp_path / "views.sqlite3")
    await store.open("test")
    model = ReadModel(store, CODEC, TOPICS)
    state, events = decided(None, start("live"), 0)
    await model.fold(Log().records("events", events))
    reader = asyncio.ensure_future(model.flush())
    await asyncio.sleep(0.05)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert await stored_seq(store, "live") is None
    Slow.gate.set()
    await model.flush(within=5)
    assert await stored_seq(store, "live") == state.seq
    assert await store.positions() == {("events", 0): len(events)}
    await store.close()


async def test_a_write_given_up_holds_no_later_write_and_its_rows_are_behind_again(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the ticket of a fold whose rows failed to render was never handed on: every later
    write waited for it for ever. Its runs are behind again, so no position moves past them."""
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    render = model._row
    failures = [RuntimeError("a row that does not render")]

    def flaky(state: ExecutionState) -> ExecutionRow:
        if failures:
            raise failures.pop()
        return render(state)

    monkeypatch.setattr(model, "_row", flaky)
    state, events = decided(None, start("ended"), 0)
    state, ended = decided(state, result("ended", ok=True), 1)
    with pytest.raises(RuntimeError):
        await model.fold(log.records("events", [*events, *ended]))
    _, other = decided(None, start("other"), 2)
    await asyncio.wait_for(model.fold(log.records("events", other)), 5)
    assert await stored_seq(store, "ended") is None
    assert await store.positions() == {("events", 0): 0}, "held at the given-up run's first record"
    await model.flush()
    assert await stored_seq(store, "ended") == state.seq
    assert await store.positions() == {("events", 0): len(events) + len(ended) + len(other)}
