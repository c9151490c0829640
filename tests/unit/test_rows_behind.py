"""ADR 0063: a live run's row waits (at most the row delay) and an ended run's is written at once;
the stored positions stay at the first record a row behind does not hold, so a crash before the
rows are written loses nothing. A real SQLite store; records built in memory (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from linkflow_stream.core.state import ExecutionState
from projections import read_model
from projections.read_model import ReadModel
from projections.store import Changes, ExecutionQuery, ExecutionRow, ReadStore, open_store
from projections.store.sqlite import SqliteStore
from tests.unit.test_read_model import CODEC, TOPICS, Log, decided, result, start


class CountingStore(SqliteStore):
    """Counts the rows each write brings, by run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.rows: dict[str, int] = {}
        self.writes = 0

    async def write(self, changes: Changes) -> None:
        self.writes += 1
        for run in changes.executions:
            self.rows[run] = self.rows.get(run, 0) + 1
        await super().write(changes)


class GatedStore(SqliteStore):
    """Writes wait until ``gate`` is set: a store slow to answer."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()

    async def write(self, changes: Changes) -> None:
        await self.gate.wait()
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


async def test_a_fold_with_nothing_to_store_writes_nothing(store: CountingStore) -> None:
    """A quick run's request, folded once the runs before it are stored, holds its position back
    and brings no row or line: no store transaction (one a run at one caller, before). The first
    request of a partition still stores the position it starts from."""
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    await model.fold(log.records("requests.normal", [start("first")]))
    assert store.writes == 1 and await store.positions() == {("requests.normal", 0): 0}
    for n, run in enumerate(("first", "second", "third")):
        if n:
            await model.fold(log.records("requests.normal", [start(run, n)]))
            assert store.writes == n + 1, f"{run}'s request: nothing to store"
        state, events = decided(None, start(run, n), n)
        _, ended = decided(state, result(run, ok=True), n)
        await model.fold(log.records("events", [*events, *ended]))
        assert store.writes == n + 2 and store.rows[run] == 1
    assert await store.positions() == {("requests.normal", 0): 3, ("events", 0): log.offsets[("events", 0)]}


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


async def test_a_write_given_up_holds_no_later_write_and_loses_nothing(tmp_path: Path) -> None:
    """A fold cancelled while it waits for its turn (a stop): before, its ticket was never handed
    on and every later write waited for it for ever. Its run is behind again, and its lines go
    with the next write, so nothing it applied is lost though it never wrote."""

    store = GatedStore(tmp_path / "views.sqlite3")
    await store.open("test")
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    state, events = decided(None, start("second"), 1)
    store.gate.set()
    await model.fold(log.records("events", events))  # in memory: its next fold reads no store
    store.gate.clear()
    first = asyncio.ensure_future(model.fold(log.records("events", decided(None, start("first"), 0)[1])))
    await asyncio.sleep(0.05)
    state, ended = decided(state, result("second", ok=True), 2)
    second = asyncio.ensure_future(model.fold(log.records("events", ended)))
    await asyncio.sleep(0.05)
    assert not first.done() and not second.done(), "the first in the store, the second waiting its turn"
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    store.gate.set()
    await first
    _, third = decided(None, start("third"), 3)
    await asyncio.wait_for(model.fold(log.records("events", third)), 5)
    lines = [line["message"] for _s, _n, line in await model.lines("second")]
    assert "execution succeeded" in lines, "its lines went with the next write"
    await model.flush()
    assert await stored_seq(store, "second") == state.seq
    assert await store.positions() == {("events", 0): log.offsets[("events", 0)]}
    await store.close()


async def test_a_row_never_holds_an_event_whose_lines_are_written_after_it(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush takes each run's state with its ticket; a fold that applies a run's next event
    while the flush renders writes after it. Rendered from memory instead, the flush's row held
    that event: a crash between the two writes lost its lines, the restart skipping an event the
    stored row holds."""
    monkeypatch.setattr(read_model, "YIELD_EVERY_ROW", 1)  # the flush pauses before each row
    rows: list[tuple[str, int]] = []
    write = store.write

    async def recorded(changes: Changes) -> None:
        rows.extend((run, row.seq) for run, row in changes.executions.items())
        await write(changes)

    monkeypatch.setattr(store, "write", recorded)
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    _, events_a = decided(None, start("a"), 0)
    state, events = decided(None, start("r"), 0)
    await model.fold(log.records("events", [*events_a, *events]))
    _, ended = decided(state, result("r", ok=True), 1)
    render, folds = model._row, []

    def render_then_fold(state: ExecutionState) -> ExecutionRow:
        if state.id == "a":  # the flush renders a, pauses, then renders r: the fold comes between
            folds.append(asyncio.ensure_future(model.fold(log.records("events", ended))))
        return render(state)

    monkeypatch.setattr(model, "_row", render_then_fold)
    await model.flush()
    await asyncio.gather(*folds)
    assert [seq for run, seq in rows if run == "r"] == [state.seq, state.seq + len(ended)]


async def test_a_run_lists_its_reruns_whose_rows_are_behind_without_writing_them(
    store: CountingStore,
) -> None:
    """``GET /api/executions/{id}`` lists the runs that link to it; those whose rows wait are
    found in memory, so a read by id writes nothing."""
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    state, events = decided(None, start("original"), 0)
    state, ended = decided(state, result("original", ok=True), 1)
    await model.fold(log.records("events", [*events, *ended]))
    written = dict(store.rows)
    rerun = start("rerun", at=2).model_copy(update={"links": {"rerun_of": "original"}})
    await model.fold(log.records("requests.normal", [rerun]))
    assert await model.linked("original") == {"reruns": ["rerun"], "children": []}
    assert store.rows == written, "nothing written for the read"
    await model.flush()
    assert await model.linked("original") == {"reruns": ["rerun"], "children": []}, "once, when stored"


async def test_a_write_works_out_its_positions_at_its_turn_past_no_run_an_earlier_write_gave_back(
    tmp_path: Path,
) -> None:
    """A fold takes an ended run and waits on the store; a page read's flush takes the other runs
    meanwhile; the fold is cancelled (a stop). Positions worked out when the flush took its ticket
    passed the ended run's records, which no committed row held: a crash then lost its end."""

    store = GatedStore(tmp_path / "views.sqlite3")
    await store.open("test")
    log = Log()
    model = ReadModel(store, CODEC, TOPICS)
    state, events = decided(None, start("ends"), 0)
    _, other = decided(None, start("other"), 0)
    store.gate.set()
    await model.fold(log.records("events", [*events, *other]))
    store.gate.clear()
    state, ended = decided(state, result("ends", ok=True), 1)
    fold = asyncio.ensure_future(model.fold(log.records("events", ended)))
    await asyncio.sleep(0.05)
    flush = asyncio.ensure_future(model.flush())
    await asyncio.sleep(0.05)
    fold.cancel()
    await asyncio.gather(fold, return_exceptions=True)
    store.gate.set()
    await flush
    assert await stored_seq(store, "other") is not None
    assert await store.positions() == {("events", 0): 0}, "held at the given-back run's first record"
    await model.flush()
    assert await stored_seq(store, "ends") == state.seq
    assert await store.positions() == {("events", 0): len(events) + len(other) + len(ended)}
    await store.close()


async def test_a_rebuilds_last_write_fails_loudly_where_a_live_flush_logs_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_all`` (a rebuild's end) raises after ``write_attempts``; a live engine's ``flush``
    logs and keeps the rows behind for the next write. A rebuild once ended with ``flush``: a store
    that refused the live runs' rows was reported as rebuilt."""
    monkeypatch.setattr(read_model, "WRITE_RETRY_SECONDS", (0.0,))
    store = CountingStore(tmp_path / "views.sqlite3")
    await store.open("test")
    refusing = [False]
    real_write = store.write

    async def write(changes: Changes) -> None:
        if refusing[0]:
            raise OSError(28, "No space left on device")
        await real_write(changes)

    monkeypatch.setattr(store, "write", write)
    log = Log()
    rebuild = ReadModel(store, CODEC, TOPICS, write_attempts=3)
    live, events = decided(None, start("live"), 0)
    await rebuild.fold(log.records("events", events))  # live: its row waits
    refusing[0] = True
    await rebuild.flush(within=5)  # logged, not raised
    with pytest.raises(read_model.StoreUnavailable, match="refused 3 writes in a row"):
        await rebuild.write_all()
    refusing[0] = False
    await rebuild.write_all()
    assert await stored_seq(store, "live") == live.seq, "still behind after the failures, then written"
    await store.close()
