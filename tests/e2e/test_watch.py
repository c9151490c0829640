"""The reads the web UI added, over HTTP and a WebSocket on a real engine: a run's body pushed as it
changes (``/watch``), a workflow's versions, and the worker status on the API's port."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from linkflow_stream.dev.testing import EngineProcess, call

pytestmark = pytest.mark.e2e


async def _watch(url: str, protocols: tuple[str, ...] = ()) -> tuple[str | None, list[dict[str, Any]]]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=protocols) as ws:
        bodies = [msg.json() async for msg in ws if msg.type is aiohttp.WSMsgType.TEXT]
        return ws.protocol, bodies


def test_watch_pushes_the_body_as_the_run_goes_on_and_ends_with_it(engine: EngineProcess) -> None:
    wf = {
        "id": f"watch-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "w", "type": "wait", "config": {"seconds": 1.5}},
            {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "'done'"}},
        ],
    }
    engine.register(wf)
    _, started = engine.start_execution(wf["id"])
    url = engine.url.replace("http", "ws") + f"/api/executions/{started['id']}/watch"
    protocol, bodies = asyncio.run(asyncio.wait_for(_watch(url, ("linkflow",)), 30))
    assert protocol == "linkflow"
    assert bodies[-1]["status"] == "success", "the socket closes once the run has ended"
    assert bodies[-1]["nodes"]["t"]["output"] == "done"
    assert "reruns" in bodies[-1], "the body is GET /api/executions/{id}'s"
    waits = [b["nodes"]["w"]["status"] for b in bodies]
    assert "running" in waits, f"the wait node was seen running before it ended: {waits}"
    assert len({repr(b) for b in bodies}) == len(bodies), "a body is sent only when it changed"

    # an ended run: its body once, then the close
    _, again = asyncio.run(asyncio.wait_for(_watch(url), 30))
    assert [b["status"] for b in again] == ["success"]


def test_watch_of_an_unknown_run_is_a_404(engine: EngineProcess) -> None:
    status, body = call("GET", f"{engine.url}/api/executions/exec_nope/watch")
    assert status == 404 and body["error"]["type"] == "not_found"


def test_workflow_versions_and_a_version_by_number(engine: EngineProcess) -> None:
    wf_id = f"versions-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]})
    engine.register({"id": wf_id, "nodes": [{"id": "b", "type": "transform", "config": {"expression": "2"}}]})
    status, listed = call("GET", f"{engine.url}/api/workflows/{wf_id}/versions")
    assert status == 200 and listed["latest"] == 2
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    status, first = call("GET", f"{engine.url}/api/workflows/{wf_id}?version=1")
    assert status == 200 and [n["id"] for n in first["nodes"]] == ["a"]
    assert call("GET", f"{engine.url}/api/workflows/{wf_id}?version=9")[0] == 404
    status, body = call("GET", f"{engine.url}/api/workflows/{wf_id}?version=zero")
    assert status == 400 and "version" in body["error"]["message"]
    assert call("GET", f"{engine.url}/api/workflows/nope-{wf_id}/versions")[0] == 404


def test_the_worker_status_is_readable_on_the_api_port(engine: EngineProcess) -> None:
    status, here = call("GET", f"{engine.url}/api/workers/status")
    assert status == 200 and here["alive"] >= 1
    _, registry = call("GET", f"{engine.registry_url}/api/workers/status")
    assert {w["id"] for w in here["workers"]} == {w["id"] for w in registry["workers"]}
