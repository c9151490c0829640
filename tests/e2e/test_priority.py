"""Issue 11, priority that orders (ADR 0029), on the real broker: a flood of low-priority runs
saturates the engine, then high-priority runs are started over HTTP. The high runs finish before
most of the low runs that were accepted earlier (read from the order of the events on each
partition of the event log, not from a timing threshold), and every low run still finishes once.
Timings are ``python -m bench.priority``'s business.

The engine is stopped (``SIGSTOP``) while the flood is written, so the flood still waits when
the high runs come, however fast the engine and the machine are: left running, an engine at a
fast hour had finished 1,527 of the 2,000 low runs before the first high one was sent."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.dev.testing import EngineProcess, call, read_topic
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.topics import execution_partitions
from linkflow_stream.nodes import build_registry
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.e2e

LOW = 2000
"""Low runs in the flood: several seconds of work for the engine, far more than one batch."""
HIGH = 8
DIAMOND = {
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expression": "{'n': input.n}"}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a.n * 2"}},
        {"id": "c", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a.n + 1"}},
        {
            "id": "e",
            "type": "transform",
            "depends_on": ["b", "c"],
            "config": {"expression": "nodes.b + nodes.c"},
        },
    ],
}
TERMINAL = {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}


async def flood(engine: EngineProcess, definition: dict[str, Any], n: int) -> list[str]:
    """``n`` low-priority start requests written to the low request topic, all acknowledged."""
    workflow = parse_workflow(definition, build_registry(Settings()), version=1, created_at=now())
    ids = [f"exec_{uuid.uuid4().hex}" for _ in range(n)]
    publisher = Publisher(engine.settings(), default_codec())
    await publisher.start()
    try:
        for chunk in (ids[i : i + 250] for i in range(0, n, 250)):
            await publisher.send(
                Outgoing(
                    topic_names.requests(Priority.LOW),
                    execution_id,
                    StartExecution(
                        execution_id=execution_id,
                        workflow=workflow,
                        input={"n": i},
                        priority=Priority.LOW,
                        requested_at=now(),
                    ),
                    "io.linkflow.execution.requested",
                )
                for i, execution_id in enumerate(chunk)
            )
    finally:
        await publisher.stop()
    return ids


async def event_ends(engine: EngineProcess) -> dict[int, int]:
    """The committed end of each partition of the event log."""
    topic = engine.settings().topic(topic_names.EVENTS)
    consumer = committed_reader(engine.bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(execution_partitions())]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def terminal_events(
    engine: EngineProcess,
) -> tuple[dict[str, tuple[int, int, EventType]], Counter[str]]:
    """Each run's terminal event as (partition, offset, type), and how often each run was created."""
    codec = default_codec()
    ended: dict[str, tuple[int, int, EventType]] = {}
    created: Counter[str] = Counter()
    for record in await read_topic(engine.bootstrap, engine.settings().topic(topic_names.EVENTS)):
        event = codec.decode(record.value, ExecutionEvent)
        if event.type is EventType.EXECUTION_CREATED:
            created[event.execution_id] += 1
        elif event.type in TERMINAL:
            ended[event.execution_id] = (record.partition, record.offset, event.type)
    return ended, created


def test_high_runs_overtake_a_low_flood_and_every_low_run_still_finishes(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory()
    workflow = {"id": f"prio-{uuid.uuid4().hex[:6]}", **DIAMOND}
    engine.register(workflow)

    assert engine.proc is not None
    engine.proc.send_signal(signal.SIGSTOP)  # well within the group's session timeout
    try:
        lows = asyncio.run(flood(engine, workflow, LOW))
        before = asyncio.run(event_ends(engine))  # lows ending past these offsets were unfinished
    finally:
        engine.proc.send_signal(signal.SIGCONT)
    highs = []
    for i in range(HIGH):
        status, body = engine.start_execution(workflow["id"], {"n": i}, priority="high")
        assert status == 202, body
        highs.append(body["id"])
    for execution_id in highs:
        assert engine.wait_status(execution_id, timeout=120)["status"] == "success"
    for _ in range(600):  # every low run ends (up to about 10 minutes under a loaded machine)
        status, queues = call("GET", f"{engine.url}/api/admin/queue/status")
        if status == 200 and queues["queued"] == 0 and queues["running"] == 0:
            break
        time.sleep(1)
    ended, created = asyncio.run(terminal_events(engine))

    # none lost, none started twice
    assert {e: ended[e][2] for e in lows if e in ended} == dict.fromkeys(lows, EventType.EXECUTION_SUCCEEDED)
    assert all(created[e] == 1 for e in lows + highs)

    # the high runs overtook the low runs accepted before them: on each partition, most of the
    # lows still unfinished when the highs were sent end after that partition's last high
    overtaken = unfinished = 0
    for partition in range(execution_partitions()):
        last_high = max((ended[h][1] for h in highs if ended[h][0] == partition), default=None)
        if last_high is None:
            continue
        waiting = [ended[e][1] for e in lows if ended[e][0] == partition and ended[e][1] >= before[partition]]
        unfinished += len(waiting)
        overtaken += sum(1 for offset in waiting if offset > last_high)
    assert unfinished >= LOW // 4, f"the flood was mostly done before the highs came ({unfinished} left)"
    assert overtaken > unfinished // 2, (
        f"only {overtaken} of {unfinished} earlier low runs ended after the high ones:\n{engine.log_tail()}"
    )
