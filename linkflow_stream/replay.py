"""Event-replay tooling: rebuild a view from offset 0 and compare it with a live engine, or
print one execution's history as the log has it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.log_reader import LogReader
from linkflow_stream.settings import Settings
from projections.status import StatusView, render


async def rebuild_status(settings: Settings, progress: Callable[[int], None] | None = None) -> StatusView:
    """The status view as a fresh fold of ``linkflow.events`` from offset 0."""
    view = StatusView()
    codec = default_codec()

    def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        view.apply(codec.decode(record.value, ExecutionEvent))
        if progress is not None and (view.applied + view.duplicates) % 10_000 == 0:
            progress(view.applied + view.duplicates)

    await _read_events(settings, handle)
    return view


@dataclass
class Comparison:
    executions: int = 0
    equal: int = 0
    missing_live: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    still_running: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing_live and not self.different


async def compare_with_live(view: StatusView, url: str, concurrency: int = 32) -> Comparison:
    """Compare every finished execution of ``view`` with ``GET /api/executions/{id}`` on ``url``.

    Running executions move on while we compare, so only finished ones must match exactly."""
    result = Comparison(executions=len(view.executions))
    queue: asyncio.Queue[str] = asyncio.Queue()
    for execution_id, state in view.executions.items():
        if state.status.terminal:
            queue.put_nowait(execution_id)
        else:
            result.still_running += 1

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            execution_id = queue.get_nowait()
            async with session.get(f"{url}/api/executions/{execution_id}") as resp:
                live: Any = await resp.json() if resp.status == 200 else None
            if live is None:
                result.missing_live.append(execution_id)
            elif live == json.loads(json.dumps(render(view.executions[execution_id]))):
                result.equal += 1
            else:
                result.different.append(execution_id)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return result


async def history(settings: Settings, execution_id: str) -> list[ExecutionEvent]:
    """Every event of one execution in log order, duplicates included."""
    events: list[ExecutionEvent] = []
    codec = default_codec()
    key = execution_id.encode()

    def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key == key:
            events.append(codec.decode(record.value, ExecutionEvent))

    await _read_events(settings, handle)
    return events


async def _read_events(settings: Settings, handle: Callable[[ConsumerRecord[bytes, bytes]], None]) -> None:
    """Hand every record of ``linkflow.events`` to ``handle``, from offset 0 to the end as of now."""
    reader = LogReader(settings.bootstrap_servers, [settings.topic(topic_names.EVENTS)], handle)
    await reader.start()
    try:
        await reader.caught_up.wait()
    finally:
        await reader.stop()
