"""The read model folds records into a real SQLite store: readable, levelled, searchable log lines,
pages of runs, restarts that resume from the stored positions, and batches folded twice that
change nothing. Records are built in memory (no broker): the fold is the unit under test."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import Dispatch, ExecutionEvent
from linkflow_stream.core.messages import NodeError, NodeResult, Priority, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, evolve
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.dlq import dlq_headers
from projections.logs import LogView, TooSlow
from projections.read_model import ReadModel, Topics
from projections.status import StatusView
from projections.store import Changes, Cursor, ExecutionQuery, ReadStore, open_store
from projections.store.sqlite import SqliteStore

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"code": NodeKind(Dispatch.TASK)})
TOPICS = Topics(events="events", requests=frozenset({"requests.normal"}))
CODEC = default_codec()


class Log:
    """Topics in memory: records with offsets, as a reader would hand them over."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def records(
        self, topic: str, items: Iterable[ExecutionEvent | StartExecution], partition: int = 0
    ) -> list[ConsumerRecord[bytes, bytes]]:
        out = []
        for item in items:
            offset = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = offset + 1
            out.append(
                ConsumerRecord(
                    topic,
                    partition,
                    offset,
                    to_millis(T0),
                    0,
                    item.execution_id.encode(),
                    CODEC.encode(item),
                    None,
                    0,
                    0,
                    (),
                )
            )
        return out


def workflow(team: str | None = None) -> WorkflowDefinition:
    return WorkflowDefinition(id="wf", created_at=T0, team=team, nodes=(NodeDefinition(id="c", type="code"),))


def start(
    execution_id: str, at: float = 0, priority: Priority = Priority.NORMAL, team: str | None = None
) -> StartExecution:
    return StartExecution(
        execution_id=execution_id,
        workflow=workflow(team),
        input={},
        priority=priority,
        requested_at=T0 + timedelta(seconds=at),
    )


def decided(
    state: ExecutionState | None, inp: StartExecution | NodeResult, at: float
) -> tuple[ExecutionState, list[ExecutionEvent]]:
    events = decide(state, inp, T0 + timedelta(seconds=at), CFG)
    for event in events:
        state = evolve(state, event)
    assert state is not None
    return state, events


def result(execution_id: str, ok: bool) -> NodeResult:
    return NodeResult(
        execution_id=execution_id,
        node_id="c",
        attempt=1,
        ok=ok,
        output=1 if ok else None,
        started_at=T0,
        finished_at=T0,
        error=None
        if ok
        else NodeError(error_class="code_error", message="ZeroDivisionError: division by zero"),
        logs={"stdout": "step 1\nstep 2\n", "stderr": "careful\n"},
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ReadStore]:
    store = open_store(None, tmp_path)
    await store.open("test")
    yield store
    await store.close()


async def test_a_failed_code_run_reads_as_a_story_and_its_lines_are_searchable(store: ReadStore) -> None:
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    state, events = decided(None, start("e"), 0)
    await model.fold(log.records("events", events))
    _, events = decided(state, result("e", ok=False), 1.5)
    await model.fold(log.records("events", events))
    lines = [line for _s, _n, line in await model.lines("e")]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("info", "execution created: workflow wf v1, priority normal"),
        ("info", "execution started"),
        ("info", "code node c started, attempt 1, on an executor"),
        ("info", "step 1"),
        ("info", "step 2"),
        ("warning", "careful"),
        ("error", "code node c failed: code_error: ZeroDivisionError: division by zero"),
        ("error", "execution failed: node c failed: ZeroDivisionError: division by zero"),
    ]
    assert [line["message"] for _s, _n, line in await model.lines("e", level="warning")][:1] == ["careful"]
    assert len(await model.lines("e", level="error")) == 2
    assert [line["message"] for _s, _n, line in await model.lines("e", text="STEP")] == ["step 1", "step 2"]
    assert [line["message"] for _s, _n, line in await model.lines("e", text="50%_")] == []
    last = await model.lines("e", node_id="c", limit=1)
    assert last[0][2]["data"] == {"error_class": "code_error"}
    assert await model.lines("unknown") == []


async def test_followers_get_stored_lines_and_an_end_marker(store: ReadStore) -> None:
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    state, events = decided(None, start("e"), 0)
    await model.fold(log.records("events", events))
    queue = model.logs.follow("e")
    _, events = decided(state, result("e", ok=True), 2)
    await model.fold(log.records("events", events))
    got = []
    while not queue.empty():
        got.append(queue.get_nowait())
    assert [g[2]["message"] if g else None for g in got] == [
        "step 1",
        "step 2",
        "careful",
        "code node c succeeded in 2.000s",
        "execution succeeded",
        None,
    ]
    assert all(g is None or g[:2] > (2, 0) for g in got), "each line says where it came from"


async def test_a_restart_resumes_from_the_stored_positions_with_live_runs_in_memory(tmp_path: Path) -> None:
    log = Log()
    first = open_store(None, tmp_path)
    await first.open("test")
    model = ReadModel(first, CODEC, TOPICS)
    done, events_done = decided(None, start("done"), 0)
    done, more = decided(done, result("done", ok=True), 1)
    running, events_running = decided(None, start("running"), 2)
    await model.fold(log.records("events", [*events_done, *more, *events_running]))
    await model.fold(log.records("requests.normal", [start("queued", 3)]))
    await model.flush()  # a stop writes the live runs' rows (ADR 0063)
    await first.close()

    again = open_store(None, tmp_path)
    await again.open("test")
    restarted = ReadModel(again, CODEC, TOPICS)
    positions = await restarted.load()
    assert positions == {
        ("events", 0): len(events_done) + len(more) + len(events_running),
        ("requests.normal", 0): 1,
    }
    assert set(restarted.status.executions) == {"running"}, "only what is live comes back into memory"
    assert set(restarted.status.accepted) == {"queued"}
    assert restarted.status.queue_counts()["normal"] == {"queued": 1, "running": 1}
    finished = await restarted.body("done")
    assert finished is not None and finished["status"] == "success", "a finished run is read from the store"
    _, ended = decided(running, result("running", ok=False), 4)
    await restarted.fold(log.records("events", ended))
    body = await restarted.body("running")
    assert body is not None and body["status"] == "failed"
    assert "running" not in restarted.status.executions
    await again.close()


async def test_a_batch_folded_twice_changes_nothing(store: ReadStore) -> None:
    """A crash after the database commit and before the reader moved on, or two instances on one
    PostgreSQL: the same records arrive again."""
    log = Log()
    state, events = decided(None, start("e"), 0)
    _, more = decided(state, result("e", ok=True), 1)
    batch = log.records("events", [*events, *more])
    await ReadModel(store, CODEC, TOPICS).fold(batch)
    before = await store.dump()
    await ReadModel(store, CODEC, TOPICS).fold(batch[:3])  # a fresh process: nothing in memory
    await ReadModel(store, CODEC, TOPICS).fold(batch)
    assert await store.dump() == before


async def test_pages_are_newest_first_filtered_and_cursored(store: ReadStore) -> None:
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    for i in range(7):
        priority = Priority.HIGH if i % 2 else Priority.LOW
        _, events = decided(None, start(f"e{i}", at=i, priority=priority, team="ops" if i < 3 else None), i)
        await model.fold(log.records("events", events))
    await model.fold(log.records("requests.normal", [start("pending", at=99)]))
    seen: list[str] = []
    cursor = None
    while True:
        rows, next_cursor = await model.page(
            ExecutionQuery(limit=3, after=Cursor.decode(cursor) if cursor else None)
        )
        seen += [json.loads(r)["id"] for r in rows]
        if next_cursor is None:
            break
        cursor = next_cursor
    assert seen == ["pending", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    high, _ = await model.page(ExecutionQuery(priority="high"))
    assert [json.loads(r)["id"] for r in high] == ["e5", "e3", "e1"]
    ops, _ = await model.page(ExecutionQuery(team="ops", status="running"))
    assert [json.loads(r)["id"] for r in ops] == ["e2", "e1", "e0"]
    window, _ = await model.page(
        ExecutionQuery(
            created_after_ms=to_millis(T0 + timedelta(seconds=2)),
            created_before_ms=to_millis(T0 + timedelta(seconds=4)),
        )
    )
    assert [json.loads(r)["id"] for r in window] == ["e3", "e2"]
    with pytest.raises(ValidationError):
        Cursor.decode("not-a-cursor")
    with pytest.raises(ValidationError):  # a time no 64-bit column holds: 400, not a store error
        Cursor.decode(Cursor(2**70, "e1").encode())


async def test_a_summary_page_is_each_body_without_its_data(store: ReadStore) -> None:
    """``?view=summary``: a run with a 200 kB input and node output is listed in a few hundred
    bytes, with every other field of its body, finished and pending alike."""
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    big = start("big").model_copy(update={"input": {"blob": "x" * 200_000}})
    state, events = decided(None, big, 0)
    _, more = decided(state, result("big", ok=True), 1)
    await model.fold(log.records("events", [*events, *more]))
    await model.fold(log.records("requests.normal", [start("pending", at=5)]))
    full, _ = await model.page(ExecutionQuery())
    summaries, cursor = await model.page(ExecutionQuery(summary=True))
    assert cursor is None and len(summaries) == len(full) == 2
    for whole, short in zip(full, summaries, strict=True):
        body, brief = json.loads(whole), json.loads(short)
        assert brief == {k: v for k, v in body.items() if k not in ("input_data", "nodes", "history")}
        assert len(short) < 600
    assert [json.loads(s)["status"] for s in summaries] == ["pending", "success"]
    assert len(full[1]) > 200_000


async def test_retention_deletes_finished_runs_in_batches_and_keeps_running_ones(store: ReadStore) -> None:
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    for i in range(5):
        state, events = decided(None, start(f"old{i}"), 0)
        _, more = decided(state, result(f"old{i}", ok=True), 1)
        await model.fold(log.records("events", [*events, *more]))
    _, events = decided(None, start("running"), 0)
    await model.fold(log.records("events", events))
    await model.flush()  # the running run's row too (ADR 0063: written within the row delay)
    assert await model.expire(T0 + timedelta(days=1), keep=timedelta(days=2)) == 0
    assert await model.expire(T0 + timedelta(days=3), keep=timedelta(days=2), batch=2, pause=0) == 5
    assert await store.count() == 1
    assert await model.lines("old0") == [], "their lines went with them"
    assert (await model.body("running")) is not None


async def test_a_failing_store_write_is_retried_until_it_lands_and_readiness_shows_it(tmp_path: Path) -> None:
    class Flaky(SqliteStore):
        failures = 2

        async def write(self, changes: Changes) -> None:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            await super().write(changes)

    store = Flaky(tmp_path / "views.sqlite3")
    await store.open("test")
    health: list[bool] = []
    model = ReadModel(store, CODEC, TOPICS, on_write_failure=lambda: health.append(model.store_healthy))
    _, events = decided(None, start("e"), 0)
    await model.fold(Log().records("events", events))
    assert health == [False, False], "each failed write is counted while the store is unhealthy"
    assert model.store_healthy
    assert (await store.positions()) == {("events", 0): 0}, "held at the live run's row behind"
    await model.flush()
    assert (await store.positions()) == {("events", 0): len(events)}
    assert (await model.body("e")) is not None
    await store.close()


async def test_a_follower_that_does_not_read_is_dropped_not_buffered_forever(store: ReadStore) -> None:
    model, log = ReadModel(store, CODEC, TOPICS, logs=LogView(backlog=1)), Log()
    state, events = decided(None, start("e"), 0)
    await model.fold(log.records("events", events[:1]))
    idle, reader = model.logs.follow("e"), model.logs.follow("e")
    await model.fold(log.records("events", events[1:]))  # several lines in one batch: handed whole
    while not reader.empty():
        reader.get_nowait()
    _, more = decided(state, result("e", ok=True), 1)
    await model.fold(log.records("events", more))
    got = [idle.get_nowait() for _ in range(idle.qsize())]
    assert got[-1] is TooSlow.TOO_SLOW and len(got) == 3, "two lines waited unread: cut off, no more lines"
    assert [r[2]["message"] for r in [reader.get_nowait() for _ in range(reader.qsize() - 1)]][-1] == (
        "execution succeeded"
    ), "the follower that kept up got every line"


LANES = Topics(
    events="events",
    requests=frozenset({"requests.normal", "requests.high"}),
    urgent_requests="requests.high",
)


async def test_a_high_run_folded_ahead_of_its_batch_is_read_and_announced_without_moving_positions(
    store: ReadStore,
) -> None:
    """ADR 0029: a high run's records are folded before the low backlog in front of them; the
    stored positions move only with the in-order batch, which skips what was folded ahead."""
    model, log = ReadModel(store, CODEC, LANES), Log()
    backlog = [r for i in range(50) for r in log.records("events", decided(None, start(f"low{i}"), 0)[1])]
    request = log.records("requests.high", [start("hi", priority=Priority.HIGH)])
    hi, created = decided(None, start("hi", priority=Priority.HIGH), 0)
    _, ended = decided(hi, result("hi", ok=True), 1)
    hi_events = log.records("events", [*created, *ended])
    batch = [*backlog, *request, *hi_events]
    assert [r for r in batch if model.urgent(r)] == [*request, *hi_events], "only the high run goes ahead"

    waiting = asyncio.ensure_future(model.status.wait_terminal("hi", 5))
    await model.fold_ahead([*request, *hi_events])
    assert await waiting, "the high ?wait caller is answered by the fold ahead"
    body = await model.body("hi")
    assert body is not None and body["status"] == "success"
    assert await store.positions() == {}, "folding ahead stores no position"
    assert await model.body("low0") is None, "the backlog is not folded yet"

    await model.fold(batch)
    assert await store.positions() == {("events", 0): 0, ("requests.high", 0): 1}, (
        "held at the first record of the live low runs' rows behind (ADR 0063); the high run ended"
    )
    await model.flush()
    assert await store.positions() == {("events", 0): len(backlog) + len(hi_events), ("requests.high", 0): 1}
    low = await model.body("low49")
    assert low is not None and low["status"] == "running"
    messages = [line["message"] for _s, _n, line in await model.lines("hi")]
    assert messages.count("execution succeeded") == 1, "folded once, not again with its batch"
    assert model.status.duplicates == 0


async def test_folding_ahead_never_reorders_a_run_and_a_replay_after_a_crash_changes_nothing(
    tmp_path: Path,
) -> None:
    """An event with a gap before it (its run's earlier events are still in the backlog) waits for
    its batch; after a crash between the fold ahead and the batch, the records come again and
    neither the fold ahead nor the batch moves the stored run back."""
    log = Log()
    first = open_store(None, tmp_path)
    await first.open("test")
    model = ReadModel(first, CODEC, LANES)
    hi, created = decided(None, start("hi", priority=Priority.HIGH), 0)
    _, ended = decided(hi, result("hi", ok=True), 1)
    records = log.records("events", [*created, *ended])
    await model.fold_ahead(records[len(created) :])
    assert await model.body("hi") is None, "no event of a run memory does not hold, except its first"
    await model.fold_ahead(records)
    done = await model.body("hi")
    assert done is not None and done["status"] == "success"
    await first.close()  # the crash: the batch with the positions was never stored

    again = open_store(None, tmp_path)
    await again.open("test")
    restarted = ReadModel(again, CODEC, LANES)
    assert await restarted.load() == {}
    assert [r for r in records if restarted.urgent(r)] == [], "a finished run is not in memory"
    await restarted.fold_ahead(records)  # as if it had come in on the high topic
    await restarted.fold(records)
    body = await restarted.body("hi")
    assert body is not None and body["status"] == "success"
    assert [line["message"] for _s, _n, line in await restarted.lines("hi")].count("execution succeeded") == 1
    assert await again.positions() == {("events", 0): len(records)}
    await again.close()


async def test_high_work_counts_as_under_way_only_while_its_records_come(store: ReadStore) -> None:
    """A high run that only waits (a signal, a timer) must not slow the views for hours."""
    now = [100.0]
    model, log = ReadModel(store, CODEC, LANES, clock=lambda: now[0]), Log()
    assert not model.urgent_live()
    request = log.records("requests.high", [start("hi", priority=Priority.HIGH)])
    assert model.urgent(request[0])
    assert model.urgent_live(), "a high request was just fetched: the orchestrator is deciding it"
    now[0] += 2.0
    assert not model.urgent_live()
    _, created = decided(None, start("hi", priority=Priority.HIGH), 0)
    await model.fold_ahead(log.records("events", created))
    assert model.urgent_live(), "its events were just folded ahead"
    now[0] += 0.5
    assert model.urgent_live()
    now[0] += 1.0
    assert not model.urgent_live(), "the run is live but has not moved for a second"


async def test_a_batch_never_stores_its_positions_before_the_fold_ahead_it_skipped_is_stored(
    store: ReadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold ahead applied a high run's end and is still writing it (a slow or failing store);
    the batch that holds the same records skips them, so it must wait: positions stored first and
    a crash then would lose the run's end for good."""
    model, log = ReadModel(store, CODEC, LANES), Log()
    hi, created = decided(None, start("hi", priority=Priority.HIGH), 0)
    _, ended = decided(hi, result("hi", ok=True), 1)
    records = log.records("events", [*created, *ended])
    gate, real_write = asyncio.Event(), store.write

    async def slow_write(changes: Changes) -> None:
        if not changes.positions:  # the fold ahead's write
            await gate.wait()
        await real_write(changes)

    monkeypatch.setattr(store, "write", slow_write)
    ahead = asyncio.ensure_future(model.fold_ahead(records))
    await asyncio.sleep(0.05)
    batch = asyncio.ensure_future(model.fold(records))
    await asyncio.sleep(0.05)
    assert await store.positions() == {}, "the batch stored its positions before the fold ahead"
    assert not batch.done()
    gate.set()
    await asyncio.gather(ahead, batch)
    assert await store.positions() == {("events", 0): len(records)}
    body = await model.body("hi")
    assert body is not None and body["status"] == "success"
    assert [line["message"] for _s, _n, line in await model.lines("hi")].count("execution succeeded") == 1


async def test_a_node_network_row_is_written_once_when_its_usage_comes_not_at_every_later_batch(
    store: ReadStore,
) -> None:
    """Rewriting every node's row at every batch made a chain of n http nodes write n²/2 rows."""
    chain = WorkflowDefinition(
        id="wf",
        created_at=T0,
        nodes=(NodeDefinition(id="c", type="code"), NodeDefinition(id="d", type="code", depends_on=("c",))),
    )
    request = StartExecution(execution_id="e", workflow=chain, input={}, requested_at=T0)
    written: list[list[tuple[str, int]]] = []
    write = store.write

    async def spy(changes: Changes) -> None:
        written.append([(r.node_id, r.network_bytes) for r in changes.node_network])
        await write(changes)

    store.write = spy  # type: ignore[method-assign]
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    state, events = decided(None, request, 0)
    moved = {"request_bytes": 10, "response_bytes": 5}
    first = result("e", ok=True).model_copy(update={"usage": moved})
    state, more = decided(state, first, 1)
    await model.fold(log.records("events", [*events, *more]))
    second = first.model_copy(update={"node_id": "d", "usage": {"request_bytes": 100}})
    state, last = decided(state, second, 2)
    await model.fold(log.records("events", last))
    assert state.status is ExecutionStatus.SUCCESS
    assert written == [[("c", 15)], [("d", 100)]]
    groups = await store.cost_groups("workflow_id", None)
    assert groups[0].network_bytes == 115
    assert groups[0].top_network_node == ("d", 100)


DLQ_TOPICS = Topics(events="events", requests=frozenset({"requests.normal"}), dlq="dlq")


def dead_letter(
    log: Log, request: StartExecution, reason: str, origin: str = "requests.normal", key: bytes | None = None
) -> ConsumerRecord[bytes, bytes]:
    """``request`` as the orchestrator dead-letters it: its bytes and key, with the dlq_* headers."""
    (record,) = log.records("dlq", [request])
    headers = tuple(dlq_headers(origin, 0, 0, reason))
    return dataclasses.replace(record, headers=headers, key=record.key if key is None else key)


TOO_LARGE = "the state does not fit linkflow.state.executions (1048588 bytes): 1200000 bytes"


async def test_a_dead_lettered_start_ends_its_pending_run_failed_with_why(tmp_path: Path) -> None:
    """A start request the orchestrator could not decide never starts: shown as pending (and
    counted as queued, which admission control counts against its team) it would stay so for
    ever, across restarts. Its dead letter ends it, failed, with the reason, in memory and store."""
    log, store = Log(), open_store(None, tmp_path)
    await store.open("test")
    model = ReadModel(store, CODEC, DLQ_TOPICS)
    await model.fold(log.records("requests.normal", [start("stuck", team="a"), start("fine", team="a")]))
    assert model.status.queued_of_team("a") == 2
    await model.fold([dead_letter(log, start("stuck", team="a"), TOO_LARGE)])
    body = await model.body("stuck")
    assert body is not None and body["status"] == "failed" and body["finished_at"] is not None
    assert body["history"][-1]["reason"] == f"start request rejected: {TOO_LARGE}"
    assert model.status.queued_of_team("a") == 1, "no longer counted as queued"
    assert await model.state("stuck") is None, "it never started"
    await model.flush()  # a stop writes the pending run's row (ADR 0063)
    await store.close()

    again = open_store(None, tmp_path)
    await again.open("test")
    restarted = ReadModel(again, CODEC, DLQ_TOPICS)
    await restarted.load()
    assert set(restarted.status.accepted) == {"fine"}, "not loaded again as pending"
    stored = await restarted.body("stuck")
    assert stored is not None and stored["status"] == "failed"
    await again.close()


async def test_a_request_keyed_by_another_id_is_never_pending_and_its_dead_letter_ends_nothing(
    store: ReadStore,
) -> None:
    """The orchestrator refuses a request whose record key is not its execution id (it would be
    decided on the wrong partition). The views do not show it as pending, and its dead letter
    does not end the run of that id, which a request keyed right may start."""
    log = Log()
    model = ReadModel(store, CODEC, DLQ_TOPICS)
    (miskeyed,) = log.records("requests.normal", [start("run")])
    await model.fold([dataclasses.replace(miskeyed, key=b"other")])
    assert await model.body("run") is None
    await model.fold(log.records("requests.normal", [start("run")]))
    reason = "record key b'other' is not its execution id 'run'"
    await model.fold([dead_letter(log, start("run"), reason, key=b"other")])
    assert (await model.body("run") or {})["status"] == "pending", "the request keyed right still counts"


async def test_a_run_waited_on_to_start_is_told_when_its_start_is_rejected(store: ReadStore) -> None:
    """A command or a signal waits for its run to start; a rejection ends that wait at once (it
    had waited its whole time, then sent to a run that would never exist)."""
    log = Log()
    model = ReadModel(store, CODEC, DLQ_TOPICS)
    await model.fold(log.records("requests.normal", [start("doomed")]))
    waiting = asyncio.create_task(model.status.wait_started("doomed", 30))
    await asyncio.sleep(0)
    await model.fold([dead_letter(log, start("doomed"), TOO_LARGE)])
    assert await asyncio.wait_for(waiting, 1)
    assert await model.status_of("doomed") is ExecutionStatus.FAILED


async def test_a_dead_letter_ends_nothing_that_started_and_tells_apart_its_topics(store: ReadStore) -> None:
    log = Log()
    model = ReadModel(store, CODEC, DLQ_TOPICS)
    running, events = decided(None, start("running"), 0)
    await model.fold(log.records("events", events))
    await model.fold(log.records("requests.normal", [start("pending")]))
    await model.fold(
        [
            dead_letter(log, start("running"), "a duplicate request that could not be decided"),
            dead_letter(log, start("pending"), "a task, not a request", origin="tasks.default.normal"),
        ]
    )
    assert (await model.body("running") or {})["status"] == running.status.value
    assert (await model.body("pending") or {})["status"] == "pending"
    assert not model.decodes(dead_letter(log, start("x"), "garbage", origin="linkflow.start"))
    assert model.decodes(dead_letter(log, start("x"), TOO_LARGE)), "its schema id is learnt first"


@pytest.mark.parametrize("kept", [1024, 0], ids=["in memory", "evicted"])
async def test_a_dead_letter_read_before_its_request_leaves_no_pending_run(
    store: ReadStore, kept: int
) -> None:
    """Topics are read side by side: a request's dead letter may come first (a rebuild reads the
    dead letters and the requests in any order, a restart may fall between them). Either order
    ends the same, whether memory still holds the rejected run or only the store does."""
    log = Log()
    model = ReadModel(store, CODEC, DLQ_TOPICS, status=StatusView(finished_cache=kept))
    await model.fold([dead_letter(log, start("early"), TOO_LARGE)])
    await model.fold(log.records("requests.normal", [start("early")]))
    # and in one batch, the dead letter first (memory may let it go before the request comes)
    await model.fold(
        [dead_letter(log, start("same"), TOO_LARGE), *log.records("requests.normal", [start("same")])]
    )
    assert (await model.body("same") or {})["status"] == "failed"
    await model.fold([dead_letter(log, start("early"), "again, for another reason")])
    body = await model.body("early")
    assert body is not None and body["status"] == "failed"
    assert body["history"][-1]["reason"] == f"start request rejected: {TOO_LARGE}", "rejected once"
    assert model.status.queue_counts()["normal"]["queued"] == 0
    assert not model.status.accepted
    # a later request of the same id that does start: its events show, and its log is its own
    state, events = decided(None, start("early"), 5)
    await model.fold(log.records("events", events))
    assert (await model.body("early") or {})["status"] == state.status.value
    assert (await model.state("early")) == state
    first_line = (await model.lines("early"))[0][2]
    assert first_line["message"].startswith("execution created"), "no line of the rejection left"


async def test_finished_runs_in_memory_stay_within_their_byte_bound(store: ReadStore) -> None:
    """A thousand finished runs with outputs of up to a megabyte each would be gigabytes in
    memory: the cache of finished runs also counts their stored bytes, and what it lets go is
    read from the store."""
    log = Log()
    model = ReadModel(store, CODEC, TOPICS, status=StatusView(finished_cache_bytes=300_000))
    for i in range(8):
        state, events = decided(None, start(f"big{i}"), 0)
        big = result(f"big{i}", ok=True).model_copy(update={"output": f"{i}" * 100_000})
        _, more = decided(state, big, 1)
        await model.fold(log.records("events", [*events, *more]))
    assert list(model.status.finished) == ["big6", "big7"], "the newest that fit in 300 kB"
    for i in range(8):
        body = await model.body(f"big{i}")
        assert body is not None and body["status"] == "success"
        assert body["nodes"]["c"]["output"] == f"{i}" * 100_000


async def test_a_waiter_resumes_before_the_fold_renders_its_row(store: ReadStore) -> None:
    """ADR 0074: a ``?wait`` caller's answer goes out before the fold renders the run's row (its
    state encoded, body and costs), which no caller waits for. Its waiter resumes in the loop turn
    after ``notify``, and the fold yields once before its first row."""
    model, log = ReadModel(store, CODEC, TOPICS), Log()
    state, events = decided(None, start("e"), 0)
    await model.fold(log.records("events", events))
    order: list[str] = []
    render = model._row

    def row(state: ExecutionState) -> object:
        order.append(f"row {state.status.value}")
        return render(state)

    model._row = row  # type: ignore[method-assign]

    async def caller() -> None:
        assert await model.status.wait_terminal("e", 5)
        order.append("answered")

    waiting = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the caller waits
    _, events = decided(state, result("e", ok=True), 1)
    await model.fold(log.records("events", events))
    await waiting
    assert order == ["answered", "row success"]


async def test_a_waiter_resumes_in_the_loop_turn_after_notify() -> None:
    """No callback and future of ``wait_for`` in between: each loop turn the answer waits is a
    turn of whatever the fold does next."""
    view = StatusView()
    state, _ = decided(None, start("e"), 0)
    done, _ = decided(state, result("e", ok=True), 1)
    waiting = asyncio.create_task(view.wait_terminal("e", 5))
    await asyncio.sleep(0)
    view.notify([done])
    await asyncio.sleep(0)
    assert waiting.done() and waiting.result() is True


async def test_a_waiter_told_in_the_turn_its_deadline_comes_was_told_in_time() -> None:
    """A busy loop can run ``notify`` and the waiter's deadline in one turn, the deadline's
    cancel reaching the waiter after the answer did: the waiter says it was told."""
    view = StatusView()
    state, _ = decided(None, start("e"), 0)
    done, _ = decided(state, result("e", ok=True), 1)
    waiting = asyncio.create_task(view.wait_terminal("e", 0.05))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.049, view.notify, [done])
    time.sleep(0.1)  # noqa: ASYNC251 - the loop is busy past both: its next turn runs both, notify first
    assert await waiting is True


@pytest.mark.parametrize("cache", [1024, 0], ids=["kept in memory", "finished cache off"])
async def test_a_waiter_is_told_before_the_write_and_store_reads_wait_for_it(
    tmp_path: Path, cache: int
) -> None:
    """ADR 0058: a ``?wait`` caller's run is told ended once its fold applies, while the store
    still writes; a page of runs, the run's log lines, its links and a cost report read after
    that wait for the write, so they never miss what the caller was told. With the finished
    cache off memory lets the run go at once: its status and body then come from the store,
    after the write, never from the row the write replaces."""

    class Held(SqliteStore):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.go = asyncio.Event()
            self.holding = False

        async def write(self, changes: Changes) -> None:
            if any(row.status == "failed" for row in changes.executions.values()):
                self.holding = True
                await self.go.wait()
                self.holding = False
            await super().write(changes)

    store = Held(tmp_path / "views.sqlite3")
    await store.open("test")
    model, log = ReadModel(store, CODEC, TOPICS, status=StatusView(finished_cache=cache)), Log()
    state, events = decided(None, start("e"), 0)
    await model.fold(log.records("events", events))
    _, events = decided(state, result("e", ok=False), 1)
    fold = asyncio.create_task(model.fold(log.records("events", events)))
    assert await model.status.wait_terminal("e", 5), "the waiter is told once the fold applies"
    assert not store.holding, "told before the fold's write began"
    for _ in range(100):  # the waiter is told before the row is rendered; the write comes next
        if store.holding:
            break
        await asyncio.sleep(0)
    assert store.holding, "the write is held after the waiter was told"
    if cache:
        assert (await model.body("e") or {})["status"] == "failed"  # memory: no wait
    read_status = asyncio.create_task(model.status_of("e"))

    reads = [
        asyncio.create_task(model.page(ExecutionQuery(status="failed"))),
        asyncio.create_task(model.lines("e", level="error")),
        asyncio.create_task(model.linked("e")),
        asyncio.create_task(model.cost_report("all", T0 + timedelta(days=1), "workflow")),
    ]
    await asyncio.sleep(0.2)
    assert not any(read.done() for read in reads), "a store read went ahead of the held write"
    assert cache or not read_status.done(), "a run memory let go was read from the replaced row"
    store.go.set()
    await fold
    page, lines, _linked, costs = await asyncio.gather(*reads)
    assert await read_status is ExecutionStatus.FAILED
    assert (await model.body("e") or {})["status"] == "failed"
    assert [json.loads(body)["id"] for body in page[0]] == ["e"]
    assert [line["message"] for _s, _n, line in lines][-1].startswith("execution failed")
    assert costs["executions"] == 1
    await store.close()
