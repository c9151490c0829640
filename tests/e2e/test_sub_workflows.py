"""Sub-workflows on a real engine (ADR 0036): a ``workflow`` node starts a child run, waits for
it holding no worker slot, and takes its output or its error; cancelling the parent cancels the
child; bodies show ``parent`` and ``children``; a kill -9 while the child runs loses nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from linkflow_stream.core.events import EventType
from linkflow_stream.dev.testing import EngineProcess, call
from tests.e2e.exactly_once import assert_exactly_once, committed_logs

pytestmark = pytest.mark.e2e


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_body(
    engine: EngineProcess, execution_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    body: Any = None
    while time.monotonic() < deadline:
        status, body = call("GET", f"{engine.url}/api/executions/{execution_id}", headers=engine.auth())
        if status == 200 and done(body):
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"{execution_id}: not as expected within 60s: {body}\n{engine.log_tail()}")


def register_pair(engine: EngineProcess, child_nodes: list[dict[str, Any]]) -> tuple[str, str]:
    child = uid("child")
    engine.register({"id": child, "nodes": child_nodes})
    parent = uid("parent")
    engine.register(
        {
            "id": parent,
            "nodes": [
                {
                    "id": "call",
                    "type": "workflow",
                    "timeout_seconds": 120,
                    "config": {"workflow_id": child, "input": "{'n': input.n + 1}"},
                },
                {
                    "id": "after",
                    "type": "transform",
                    "depends_on": ["call"],
                    "config": {"expression": "nodes.call * 10"},
                },
            ],
        }
    )
    return parent, child


def test_the_childs_output_flows_back_to_the_parent(engine: EngineProcess) -> None:
    parent, child = register_pair(
        engine, [{"id": "double", "type": "transform", "config": {"expression": "input.n * 2"}}]
    )
    status, body = engine.start_execution(parent, {"n": 20}, wait=60)
    assert status == 200, body
    assert body["status"] == "success", body
    assert body["nodes"]["call"]["output"] == 42
    assert body["nodes"]["after"]["output"] == 420
    child_id = f"{body['id']}.call.1"
    # the read model indexes runs by their parent link; the child's row may land a moment later
    shown = wait_body(engine, body["id"], lambda b: b.get("children") == [child_id])
    assert shown["parent"] is None
    child_body = engine.get(child_id)
    assert child_body["workflow_id"] == child
    assert child_body["status"] == "success"
    assert child_body["parent"] == body["id"]
    assert child_body["input_data"] == {"n": 21}


def test_a_failed_child_fails_the_parents_node_with_its_error(engine: EngineProcess) -> None:
    parent, _ = register_pair(
        engine, [{"id": "x", "type": "transform", "config": {"expression": "$error('child broke')"}}]
    )
    status, body = engine.start_execution(parent, {"n": 1}, wait=60)
    assert status == 200, body
    assert body["status"] == "failed"
    child_body = engine.get(f"{body['id']}.call.1")
    assert child_body["status"] == "failed"
    error = body["nodes"]["call"]["error"]
    assert error["error_class"] == child_body["nodes"]["x"]["error"]["error_class"]
    assert "child broke" in error["message"]
    assert body["nodes"]["after"]["status"] in ("skipped", "cancelled")


def test_cancelling_the_parent_cancels_the_child(engine: EngineProcess) -> None:
    parent, _ = register_pair(engine, [{"id": "w", "type": "wait", "config": {"seconds": 300}}])
    status, body = engine.start_execution(parent, {"n": 1})
    assert status == 202, body
    run = body["id"]
    child_id = f"{run}.call.1"
    wait_body(engine, child_id, lambda b: b["status"] == "running")  # the child is in flight
    status, answer = call("POST", f"{engine.url}/api/executions/{run}/cancel", {}, engine.auth())
    assert status in (200, 202), answer
    assert engine.wait_status(run)["status"] == "cancelled"
    child_body = engine.wait_status(child_id)
    assert child_body["status"] == "cancelled"
    assert run in (child_body["history"][-1]["reason"] or "")


def test_a_workflow_calling_itself_is_refused(engine: EngineProcess) -> None:
    wf = uid("selfish")
    body = {"id": wf, "nodes": [{"id": "call", "type": "workflow", "config": {"workflow_id": wf}}]}
    status, answer = call("POST", f"{engine.url}/api/workflows", body, engine.auth())
    assert status == 400, answer
    assert "cannot call itself" in answer["error"]["message"]
    body["nodes"][0]["config"] = {"workflow_id": uid("missing")}
    status, answer = call("POST", f"{engine.url}/api/workflows", body, engine.auth())
    assert status == 400, answer
    assert "no workflow" in answer["error"]["message"]


def test_kill_9_while_the_child_runs(engine_factory: Callable[..., EngineProcess]) -> None:
    engine = engine_factory()
    parent, child = register_pair(
        engine,
        [
            {"id": "w", "type": "wait", "config": {"seconds": 4}},
            {"id": "done", "type": "transform", "depends_on": ["w"], "config": {"expression": "input.n"}},
        ],
    )
    status, body = engine.start_execution(parent, {"n": 6})
    assert status == 202, body
    run = body["id"]
    child_id = f"{run}.call.1"
    # in flight at the kill: the child waits on its timer, the parent's node waits on the child
    child_running = wait_body(engine, child_id, lambda b: b["nodes"]["w"]["status"] == "running")
    assert child_running["status"] == "running"
    assert engine.get(run)["nodes"]["call"]["status"] == "running"
    engine.kill()
    engine.start()
    finished = engine.wait_status(run, timeout=90)
    assert finished["status"] == "success", finished
    assert finished["nodes"]["after"]["output"] == 70
    assert engine.get(child_id)["status"] == "success"
    assert engine.get(child_id)["finished_at"] > child_running["started_at"]
    # exactly once: each log has every seq once and one terminal event; one child run, started once
    states = assert_exactly_once(engine, [run, child_id])
    assert states[run].nodes["call"].attempts == 1
    assert states[child_id].nodes["w"].attempts == 1
    logs = committed_logs(engine, [run, child_id])
    assert [e.type for e in logs[child_id]].count(EventType.EXECUTION_CREATED) == 1
    assert [e.type for e in logs[run]].count(EventType.EXECUTION_SUCCEEDED) == 1
    status, page = call("GET", f"{engine.url}/api/executions?workflow_id={child}", headers=engine.auth())
    assert status == 200, page
    assert [r["id"] for r in page["executions"]] == [child_id]


def test_a_node_timeout_cancels_the_child_and_fails_the_node(engine: EngineProcess) -> None:
    child = uid("child")
    engine.register({"id": child, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 300}}]})
    parent = uid("parent")
    engine.register(
        {
            "id": parent,
            "nodes": [
                {"id": "call", "type": "workflow", "timeout_seconds": 3, "config": {"workflow_id": child}}
            ],
        }
    )
    status, body = engine.start_execution(parent, {})
    assert status == 202, body
    run = body["id"]
    finished = engine.wait_status(run)
    assert finished["status"] == "failed"
    assert finished["nodes"]["call"]["error"]["error_class"] == "timeout"
    child_body = engine.wait_status(f"{run}.call.1")
    assert child_body["status"] == "cancelled"
