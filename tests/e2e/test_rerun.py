"""Reruns on a real engine: from the failed node (what still holds is reused, not called again),
with the same or the latest workflow version, from the start; linked both ways; 409 and 400."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from linkflow_stream.dev.testing import EngineProcess, TargetServer, call

pytestmark = pytest.mark.e2e


def version(target: TargetServer, wf_id: str, b_status: int) -> dict[str, Any]:
    return {
        "id": wf_id,
        "nodes": [
            {"id": "a", "type": "http", "config": {"method": "GET", "url": f"{target.url}/rr/{wf_id}/a"}},
            {"id": "x", "type": "transform", "config": {"expression": "input.n"}},
            {
                "id": "b",
                "type": "http",
                "depends_on": ["a"],
                "config": {
                    "method": "GET",
                    "url": f"{target.url}/status/{b_status}",
                    "circuit_breaker": False,
                },
            },
            {"id": "c", "type": "transform", "depends_on": ["b", "x"], "config": {"expression": "'done'"}},
        ],
    }


def rerun(
    engine: EngineProcess, execution_id: str, body: dict[str, Any] | None, wait: float = 30
) -> tuple[int, Any]:
    """``body`` ``None`` sends none (every field has a default)."""
    return call(
        "POST", f"{engine.url}/api/executions/{execution_id}/rerun?wait={wait}", body, timeout=wait + 30
    )


def test_rerun_from_failed_reuses_what_holds_and_links_both_ways(
    engine: EngineProcess, target: TargetServer
) -> None:
    wf_id = f"rr-{uuid.uuid4().hex[:8]}"
    engine.register(version(target, wf_id, 500))
    status, first = engine.start_execution(wf_id, {"n": 3}, wait=30)
    assert status == 200 and first["status"] == "failed", first
    assert first["nodes"]["b"]["status"] == "failed"
    assert len(target.hits(f"/rr/{wf_id}/a")) == 1

    # the same version: a and x are reused (a is not called again), b fails again; no body is
    # the default rerun
    status, same = rerun(engine, first["id"], None)
    assert status == 200, same
    assert same["status"] == "failed"
    assert same["rerun_of"] == first["id"]
    assert {n: s["reused"] for n, s in same["nodes"].items()} == {
        "a": True,
        "x": True,
        "b": False,
        "c": False,
    }
    assert same["nodes"]["a"]["output"] == first["nodes"]["a"]["output"]
    assert same["nodes"]["a"]["attempts"] == 0
    assert len(target.hits(f"/rr/{wf_id}/a")) == 1

    # the latest version repairs b: b runs (changed), a is still reused, c runs after it
    engine.register(version(target, wf_id, 200))
    status, latest = rerun(engine, first["id"], {"workflow_version": "latest"})
    assert status == 200, latest
    assert latest["status"] == "success", latest
    assert latest["workflow_version"] == 2
    assert latest["nodes"]["a"]["reused"] and not latest["nodes"]["b"]["reused"]
    assert latest["nodes"]["c"]["output"] == "done"
    assert len(target.hits(f"/rr/{wf_id}/a")) == 1

    # from the start: everything runs again, with new input if given
    status, fresh = rerun(
        engine, first["id"], {"from": "start", "workflow_version": "latest", "input_data": {"n": 9}}
    )
    assert status == 200, fresh
    assert fresh["status"] == "success" and fresh["nodes"]["x"]["output"] == 9
    assert not any(s["reused"] for s in fresh["nodes"].values())
    assert len(target.hits(f"/rr/{wf_id}/a")) == 2

    # the original lists its reruns, oldest first
    deadline = time.monotonic() + 30
    while True:
        status, original = call("GET", f"{engine.url}/api/executions/{first['id']}")
        assert status == 200, original
        if len(original["reruns"]) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert original["reruns"] == [same["id"], latest["id"], fresh["id"]]
    assert original["rerun_of"] is None

    # a run that succeeded has nothing failed to rerun; from the start it may
    status, body = rerun(engine, latest["id"], {})
    assert status == 409, body
    assert "from" in body["error"]["message"]
    assert rerun(engine, latest["id"], {"from": "start"})[0] == 200


def test_a_running_run_cannot_be_rerun_and_bad_bodies_are_400(engine: EngineProcess) -> None:
    wf_id = f"rr-{uuid.uuid4().hex[:8]}"
    engine.register({"id": wf_id, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 30}}]})
    status, started = engine.start_execution(wf_id)
    assert status == 202, started
    engine.wait_status(started["id"], ("running",))
    status, body = rerun(engine, started["id"], {"from": "start"}, wait=0)
    assert status == 409, body
    assert "still running" in body["error"]["message"]
    for bad in ({"from": "middle"}, {"workflow_version": 3}, {"colour": "red"}):
        status, body = rerun(engine, started["id"], bad, wait=0)
        assert status == 400, (bad, body)
    assert rerun(engine, f"exec_{uuid.uuid4().hex}", {}, wait=0)[0] == 404
    call("POST", f"{engine.url}/api/executions/{started['id']}/cancel")
