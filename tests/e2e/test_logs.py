"""Execution logs over HTTP and streamed over a WebSocket (EXEC-007)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from linkflow_stream.dev.testing import EngineProcess, call

pytestmark = pytest.mark.e2e


def test_logs_tell_what_happened_and_can_be_searched(engine: EngineProcess) -> None:
    wf = {
        "id": f"logs-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "1"}},
            {
                "id": "c",
                "type": "code",
                "depends_on": ["a"],
                "config": {
                    "source": "def main(data):\n    print('hello from code')\n"
                    "    raise ValueError('bad input')\n"
                },
            },
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=30)
    assert status == 200 and done["status"] == "failed"
    url = f"{engine.url}/api/executions/{done['id']}/logs"
    status, body = call("GET", url)
    assert status == 200
    messages = [line["message"] for line in body["logs"]]
    assert messages[0].startswith("execution created: workflow")
    assert "hello from code" in messages
    assert messages[-1].startswith("execution failed: node c failed")
    _, errors = call("GET", f"{url}?level=error")
    assert {line["level"] for line in errors["logs"]} == {"error"} and errors["count"] == 2
    _, only_a = call("GET", f"{url}?node_id=a")
    assert only_a["count"] >= 2 and {line["node_id"] for line in only_a["logs"]} == {"a"}
    _, found = call("GET", f"{url}?q=VALUEERROR")
    assert found["count"] >= 1
    assert call("GET", f"{url}?level=loud")[0] == 400
    assert call("GET", f"{engine.url}/api/executions/exec_nope/logs")[0] == 404


def test_the_log_stream_follows_a_running_execution_to_its_end(engine: EngineProcess) -> None:
    wf = {
        "id": f"stream-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "w", "type": "wait", "config": {"seconds": 1.5}},
            {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "'done'"}},
        ],
    }
    engine.register(wf)
    _, body = engine.start_execution(wf["id"])
    engine.wait_status(body["id"], ("running",))

    async def follow() -> list[str]:
        ws_url = engine.url.replace("http", "ws") + f"/api/executions/{body['id']}/logs/stream"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            return [msg.json()["message"] async for msg in ws if msg.type is aiohttp.WSMsgType.TEXT]

    lines = asyncio.run(asyncio.wait_for(follow(), 30))
    assert lines[0].startswith("execution created")
    assert "wait node w started, attempt 1, as a timer" in lines
    assert lines[-1] == "execution succeeded", "the stream ends when the execution does"
