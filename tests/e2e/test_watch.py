"""The reads the web UI added, over HTTP and a WebSocket on a real engine: a run's body pushed as it
changes (``/watch``), a workflow's versions, and the worker status on the API's port."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from linkflow_stream.dev.testing import EngineProcess, call

pytestmark = pytest.mark.e2e


async def _watch(
    url: str, protocols: tuple[str, ...] = (), on_body: Callable[[dict[str, Any]], None] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=protocols) as ws:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                bodies.append(msg.json())
                if on_body is not None:
                    await asyncio.to_thread(on_body, bodies[-1])
        return ws.protocol, bodies


def test_watch_pushes_the_body_as_the_run_goes_on_and_ends_with_it(engine: EngineProcess) -> None:
    """A long wait (no race with a loaded machine) seen running, then cancelled: the socket sends
    each changed body and closes once the run has ended."""
    wf = {
        "id": f"watch-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "w", "type": "wait", "config": {"seconds": 120}},
            {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "'done'"}},
        ],
    }
    engine.register(wf)
    _, started = engine.start_execution(wf["id"])
    url = engine.url.replace("http", "ws") + f"/api/executions/{started['id']}/watch"
    cancelled = []

    def cancel_once_running(body: dict[str, Any]) -> None:
        if body["nodes"]["w"]["status"] == "running" and not cancelled:
            cancelled.append(call("POST", f"{engine.url}/api/executions/{started['id']}/cancel")[0])

    protocol, bodies = asyncio.run(asyncio.wait_for(_watch(url, ("linkflow",), cancel_once_running), 90))
    assert protocol == "linkflow"
    assert cancelled == [202] or cancelled == [200], cancelled
    assert bodies[-1]["status"] == "cancelled", "the socket closes once the run has ended"
    assert bodies[-1]["nodes"]["t"]["status"] in ("pending", "skipped", "cancelled")
    assert "reruns" in bodies[-1], "the body is GET /api/executions/{id}'s"
    waits = [b["nodes"]["w"]["status"] for b in bodies]
    assert "running" in waits, f"the wait node was seen running before it ended: {waits}"
    assert len({repr(b) for b in bodies}) == len(bodies), "a body is sent only when it changed"

    # an ended run: its body once, then the close
    _, again = asyncio.run(asyncio.wait_for(_watch(url), 30))
    assert [b["status"] for b in again] == ["cancelled"]


def test_a_websocket_opened_by_another_sites_page_is_refused(engine: EngineProcess) -> None:
    """Keys are off here (as on loopback by default): the Origin check is what keeps a page on
    another site from reading runs through the user's engine. Its own pages and clients without
    an Origin are let in."""
    wf = {
        "id": f"origin-{uuid.uuid4().hex[:6]}",
        "nodes": [{"id": "t", "type": "transform", "config": {"expression": "1"}}],
    }
    engine.register(wf)
    _, done = engine.start_execution(wf["id"], wait=30)
    for path in ("watch", "logs/stream"):
        url = engine.url.replace("http", "ws") + f"/api/executions/{done['id']}/{path}"

        async def open_from(origin: str | None, url: str = url) -> int:
            headers = {"Origin": origin} if origin else {}
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(url, headers=headers) as ws:
                        async for _ in ws:
                            pass
                        return 101
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        assert asyncio.run(open_from("http://evil.example")) == 403, path
        assert asyncio.run(open_from(engine.url)) == 101, path
        assert asyncio.run(open_from(None)) == 101, path


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
