"""The ``/logs/stream`` WebSocket handler: a run that ends while the handler reads and sends the
stored backlog still has its last lines sent, then the stream ends.

The handler subscribes, reads the backlog, then asked the run's status: a fold that applied the
run's end during the backlog read (memory says ended at once; its lines are stored and published
a moment later) made it skip the relay, so the last lines were never sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType

from linkflow_stream.core.state import ExecutionStatus
from projections.logs import Line, LogView
from tests.unit.socket_app import serving


def line(message: str) -> Line:
    return {"at": "2026-12-03T00:00:00Z", "level": "info", "node_id": None, "message": message, "data": None}


class Views:
    """A running run whose last event the fold applies while the handler reads the backlog: memory
    says ``success`` from then on, and the last line is stored and published right after."""

    def __init__(self) -> None:
        self.logs = LogView()
        self.status = ExecutionStatus.RUNNING

    async def body(self, execution_id: str) -> dict[str, Any]:
        return {"id": execution_id, "status": self.status.value, "team": None}

    async def status_of(self, execution_id: str) -> ExecutionStatus:
        return self.status

    async def lines(self, execution_id: str) -> list[tuple[int, int, Line]]:
        backlog = [(1, 0, line("execution created"))]
        self.status = ExecutionStatus.SUCCESS  # applied: memory knows at once ...
        loop = asyncio.get_running_loop()
        # ... and its write ends, then its lines go to the followers
        loop.call_soon(self.logs.publish, execution_id, [(2, 0, line("execution succeeded"))], True)
        return backlog


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")  # the principal's str key
async def test_a_run_that_ends_while_the_backlog_is_sent_still_sends_its_last_lines() -> None:
    views = Views()
    async with serving(views, "/api/executions/{id}/logs/stream", lambda api: api.stream_logs) as client:
        ws = await client.ws_connect("/api/executions/r1/logs/stream")
        messages = []
        async with asyncio.timeout(10):
            async for msg in ws:
                assert msg.type is WSMsgType.TEXT, msg
                messages.append(msg.json()["message"])
        assert messages == ["execution created", "execution succeeded"]
