"""The ``/watch`` WebSocket handler leaves nothing behind when it is cancelled while it waits for
the run to change (its connection dropped, the server shutting down): the waiter on the change
event goes with it, and the watch is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.socket_app import serving


class CountedEvent(asyncio.Event):
    """Counts the coroutines waiting on it: a waiter left running after the handler is a leak."""

    waiting = 0

    async def wait(self) -> bool:  # type: ignore[override]
        CountedEvent.waiting += 1
        try:
            return await super().wait()
        finally:
            CountedEvent.waiting -= 1


class Status:
    def __init__(self) -> None:
        self.watching: set[asyncio.Event] = set()
        self.handler: asyncio.Task[Any] | None = None

    def watch(self, execution_id: str) -> asyncio.Event:
        self.handler = asyncio.current_task()
        changed = CountedEvent()
        self.watching.add(changed)
        return changed

    def unwatch(self, execution_id: str, changed: asyncio.Event) -> None:
        self.watching.discard(changed)


class Views:
    """A run that stays running and never changes."""

    def __init__(self) -> None:
        self.status = Status()

    async def body(self, execution_id: str) -> dict[str, Any]:
        return {"id": execution_id, "status": "running", "team": None}

    async def linked(self, execution_id: str) -> dict[str, Any]:
        return {}


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")  # the principal's str key
async def test_a_cancelled_watch_leaves_no_waiter_and_no_watch() -> None:
    views = Views()
    async with serving(views, "/api/executions/{id}/watch", lambda api: api.watch_execution) as client:
        ws = await client.ws_connect("/api/executions/r1/watch")
        assert (await ws.receive_json())["status"] == "running"
        for _ in range(100):  # the handler reaches its wait for a change
            if CountedEvent.waiting:
                break
            await asyncio.sleep(0.01)
        assert CountedEvent.waiting == 1 and views.status.handler is not None
        views.status.handler.cancel()
        for _ in range(100):
            if views.status.handler.done():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert CountedEvent.waiting == 0, "the change waiter outlived the handler"
        assert not views.status.watching, "the watch was not dropped"
        await ws.close()
