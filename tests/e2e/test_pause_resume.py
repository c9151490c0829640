"""Pause and resume on a real engine (issue 10 item 2, ADR 0034): a paused run lets its in-flight
http call finish but starts nothing new; its wait timer comes due while paused and fires on
resume; ``paused`` shows in the body, the history and the list filter; the 4xx contract; and a
kill -9 of the engine while a run is paused: after the restart the run is still paused, starts
nothing, and completes exactly once when resumed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from linkflow_stream.core.events import EventType
from linkflow_stream.core.state import ExecutionStatus
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, read_events
from tests.e2e.exactly_once import assert_exactly_once

pytestmark = pytest.mark.e2e


def post(engine: EngineProcess, path: str, body: Any = None) -> tuple[int, Any]:
    return call("POST", f"{engine.url}{path}", body, engine.auth())


def events_of(engine: EngineProcess, execution_id: str) -> list[dict[str, Any]]:
    status, body = call("GET", f"{engine.url}/api/executions/{execution_id}/events", headers=engine.auth())
    assert status == 200, body
    return list(body["events"])


def seq_of(events: list[dict[str, Any]], type_: str, node_id: str | None = None) -> int:
    found = [
        e["seq"] for e in events if e["type"] == type_ and (node_id is None or e.get("node_id") == node_id)
    ]
    assert len(found) == 1, (type_, node_id, found)
    return int(found[0])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def start(engine: EngineProcess, wf_id: str) -> str:
    status, body = engine.start_execution(wf_id, {"n": 1})
    assert status == 202, body
    return str(body["id"])


def test_a_paused_run_finishes_in_flight_work_and_starts_the_rest_on_resume(
    engine: EngineProcess, target: TargetServer
) -> None:
    wf_id = f"pause-{uuid.uuid4().hex[:8]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {
                    "id": "h",
                    "type": "http",
                    "timeout_seconds": 30,
                    "config": {"method": "POST", "url": f"{target.url}/slow?s=6", "json": {"wf": wf_id}},
                },
                {"id": "w", "type": "wait", "config": {"seconds": 7}},
                {"id": "after_h", "type": "transform", "depends_on": ["h"], "config": {"expression": "1"}},
                {"id": "after_w", "type": "transform", "depends_on": ["w"], "config": {"expression": "2"}},
            ],
        }
    )
    run_id = start(engine, wf_id)
    status, body = post(engine, f"/api/executions/{run_id}/pause")
    assert (status, body["status"], body["deadline"]) == (202, "pausing", "keep"), body
    paused = engine.wait_status(run_id, ("paused",), timeout=30)
    assert paused["history"][-1]["from"] == "running"
    events = events_of(engine, run_id)
    pause_seq = seq_of(events, "execution_paused")
    # both nodes were in flight when the pause landed
    assert seq_of(events, "node_started", "h") < pause_seq
    wait_started = next(e for e in events if e["type"] == "node_started" and e["node_id"] == "w")
    assert seq_of(events, "node_started", "w") < pause_seq

    # the http call finishes while paused and is recorded; nothing after it starts
    body = wait_for(
        lambda: (b := engine.get(run_id))["nodes"]["h"]["status"] == "success" and b, 30, "h finished"
    )
    assert body["status"] == "paused"
    assert len([r for r in target.hits("/slow") if (r["body"] or {}).get("wf") == wf_id]) == 1
    # let the wait come due while paused: it must not fire yet
    due_at = wait_started["due_at"]
    wait_for(
        lambda: engine.get(run_id)["nodes"]["w"]["status"] == "running" and _past(due_at, 1.5), 30, "w due"
    )
    body = engine.get(run_id)
    assert body["status"] == "paused"
    assert {n: body["nodes"][n]["status"] for n in ("w", "after_h", "after_w")} == {
        "w": "running",
        "after_h": "pending",
        "after_w": "pending",
    }
    listed = f"{engine.url}/api/executions?status=paused&workflow_id={wf_id}"
    page = wait_for(
        lambda: (p := call("GET", listed, headers=engine.auth())[1])["executions"] and p,
        30,
        "listed as paused",
    )
    assert [e["id"] for e in page["executions"]] == [run_id]
    assert [e["status"] for e in page["executions"]] == ["paused"]

    status, body = post(engine, f"/api/executions/{run_id}/pause")
    assert (status, body["error"]["type"]) == (409, "conflict"), body
    assert "already paused" in body["error"]["message"]

    status, body = post(engine, f"/api/executions/{run_id}/resume")
    assert (status, body["status"]) == (202, "resuming"), body
    done = engine.wait_status(run_id, timeout=30)
    assert done["status"] == "success", done
    assert (done["nodes"]["after_h"]["output"], done["nodes"]["after_w"]["output"]) == (1, 2)
    transitions = [(t["from"], t["to"]) for t in done["history"]]
    assert transitions == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "paused"),
        ("paused", "running"),
        ("running", "success"),
    ]
    events = events_of(engine, run_id)
    resume_seq = seq_of(events, "execution_resumed")
    assert pause_seq < seq_of(events, "node_succeeded", "h") < resume_seq  # recorded while paused
    assert resume_seq < seq_of(events, "node_succeeded", "w")  # the wait fired on resume
    # after_h and after_w are transforms: each attempt one event, started and ended (ADR 0056)
    assert resume_seq < seq_of(events, "node_succeeded", "after_h")
    assert resume_seq < seq_of(events, "node_succeeded", "after_w")
    assert {e["dispatch"] for e in events if e.get("node_id") in ("after_h", "after_w")} == {"inline"}

    logs = wait_for(
        lambda: (
            (
                lines := [
                    line["message"]
                    for line in call(
                        "GET", f"{engine.url}/api/executions/{run_id}/logs", headers=engine.auth()
                    )[1]["logs"]
                ]
            )
            and any(m.startswith("execution resumed") for m in lines)
            and lines
        ),
        30,
        "pause and resume in the logs",
    )
    assert "execution paused: paused by request" in logs

    status, body = post(engine, f"/api/executions/{run_id}/resume")
    assert (status, body["error"]["type"]) == (409, "conflict"), body
    assert "already ended" in body["error"]["message"]
    status, body = post(engine, f"/api/executions/{run_id}/pause")
    assert status == 409, body


def _seconds(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def _past(iso_time: str, margin: float) -> bool:
    return datetime.now(UTC).timestamp() > _seconds(iso_time) + margin


def test_pause_and_resume_answer_bad_requests_with_4xx(engine: EngineProcess, target: TargetServer) -> None:
    wf_id = f"pause-4xx-{uuid.uuid4().hex[:8]}"
    engine.register(
        {
            "id": wf_id,
            "timeout_seconds": 600,
            "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 600}}],
        }
    )
    missing = f"no-such-{uuid.uuid4().hex[:6]}"
    for action in ("pause", "resume"):
        status, body = post(engine, f"/api/executions/{missing}/{action}")
        assert (status, body["error"]["type"]) == (404, "not_found"), body
    run_id = start(engine, wf_id)
    engine.wait_status(run_id, ("running",), timeout=30)
    status, body = post(engine, f"/api/executions/{run_id}/resume")
    assert (status, body["error"]["type"]) == (409, "conflict"), body
    assert "not paused" in body["error"]["message"]
    for bad in ({"deadline": "forever"}, {"deadline": 1}, {"other": "x"}, ["keep"]):
        status, body = post(engine, f"/api/executions/{run_id}/pause", bad)
        assert (status, body["error"]["type"]) == (400, "validation"), (bad, body)
    status, body = call(
        "POST", f"{engine.url}/api/executions/{run_id}/pause", headers=engine.auth(), raw=b"{not json"
    )
    assert status == 400, body

    # suspend: the deadline leaves the body while paused and comes back moved on by the pause
    before = engine.get(run_id)["deadline_at"]
    status, body = post(engine, f"/api/executions/{run_id}/pause", {"deadline": "suspend"})
    assert (status, body["deadline"]) == (202, "suspend"), body
    paused = engine.wait_status(run_id, ("paused",), timeout=30)
    assert paused["deadline_at"] is None
    time.sleep(1.0)
    assert post(engine, f"/api/executions/{run_id}/resume")[0] == 202
    resumed = wait_for(lambda: (b := engine.get(run_id))["status"] == "running" and b, 30, "resumed")
    assert _seconds(resumed["deadline_at"]) - _seconds(before) >= 1.0
    status, body = post(engine, f"/api/executions/{run_id}/cancel")
    assert status == 202, body
    assert engine.wait_status(run_id, timeout=30)["status"] == "cancelled"


def test_cancel_ends_a_paused_run(engine: EngineProcess) -> None:
    wf_id = f"pause-cancel-{uuid.uuid4().hex[:8]}"
    engine.register({"id": wf_id, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 600}}]})
    run_id = start(engine, wf_id)
    assert post(engine, f"/api/executions/{run_id}/pause")[0] == 202
    engine.wait_status(run_id, ("paused",), timeout=30)
    assert post(engine, f"/api/executions/{run_id}/cancel")[0] == 202
    done = engine.wait_status(run_id, timeout=30)
    assert done["status"] == "cancelled"
    assert [t["to"] for t in done["history"]][-2:] == ["paused", "cancelled"]


def test_kill_9_while_paused_then_resume_completes_exactly_once(
    engine_factory: Callable[..., EngineProcess], target: TargetServer
) -> None:
    engine = engine_factory()
    wf_id = f"pause-crash-{uuid.uuid4().hex[:8]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "w", "type": "wait", "config": {"seconds": 2}},
                {
                    "id": "h",
                    "type": "http",
                    "depends_on": ["w"],
                    "timeout_seconds": 10,
                    "config": {"method": "POST", "url": f"{target.url}/pause-crash/{wf_id}", "json": {}},
                },
                {
                    "id": "t",
                    "type": "transform",
                    "depends_on": ["h"],
                    "config": {"expression": "nodes.h.status"},
                },
            ],
        }
    )
    ids = [start(engine, wf_id) for _ in range(3)]
    for run_id in ids:
        assert post(engine, f"/api/executions/{run_id}/pause")[0] == 202
    for run_id in ids:
        engine.wait_status(run_id, ("paused",), timeout=30)
    # proof that each run was paused at the kill: its committed log ends in execution_paused
    committed = asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}linkflow.events"))
    for run_id in ids:
        log = [e for e in committed if e.execution_id == run_id]
        assert log[-1].type is EventType.EXECUTION_PAUSED, [e.type for e in log]
        assert any(e.type is EventType.NODE_STARTED and e.node_id == "w" for e in log)
    engine.kill()

    engine.start()
    # the wait came due while the engine was down and then while paused: still nothing runs
    time.sleep(3.0)
    for run_id in ids:
        body = engine.wait_status(run_id, ("paused",), timeout=60)
        assert (body["nodes"]["w"]["status"], body["nodes"]["h"]["status"]) == ("running", "pending")
        wait_started = next(e for e in events_of(engine, run_id) if e["type"] == "node_started")
        assert _past(wait_started["due_at"], 0.5), "the wait is not due yet: the check proves nothing"
    assert target.hits(f"/pause-crash/{wf_id}") == []

    for run_id in ids:
        status, body = post(engine, f"/api/executions/{run_id}/resume")
        assert status == 202, body
    finished = {run_id: engine.wait_status(run_id, timeout=60) for run_id in ids}
    assert {b["status"] for b in finished.values()} == {"success"}, finished
    states = assert_exactly_once(engine, ids)
    assert {s.status for s in states.values()} == {ExecutionStatus.SUCCESS}
    for state in states.values():
        assert [t.to_status for t in state.history][-3:] == [
            ExecutionStatus.PAUSED,
            ExecutionStatus.RUNNING,
            ExecutionStatus.SUCCESS,
        ]
    keys = [r["headers"]["Idempotency-Key"].split("/")[0] for r in target.hits(f"/pause-crash/{wf_id}")]
    assert sorted(set(keys)) == sorted(ids)
