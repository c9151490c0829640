"""Error workflows on a real engine (ADR 0036): a workflow's ``on_failure`` workflow starts once,
with the failure as its input, when a run fails; a failing run of the error workflow itself
starts none."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from linkflow_stream.dev.testing import EngineProcess, call

pytestmark = pytest.mark.e2e


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def runs_of(engine: EngineProcess, workflow_id: str) -> list[dict[str, Any]]:
    status, body = call(
        "GET", f"{engine.url}/api/executions?workflow_id={workflow_id}", headers=engine.auth()
    )
    assert status == 200, body
    return list(body["executions"])


def wait_found(engine: EngineProcess, execution_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = call("GET", f"{engine.url}/api/executions/{execution_id}", headers=engine.auth())
        if status == 200 and body["status"] in ("success", "failed", "cancelled"):
            return dict(body)
        time.sleep(0.2)
    raise AssertionError(f"{execution_id} did not end within {timeout}s\n{engine.log_tail()}")


def test_a_failed_run_starts_its_error_workflow_once(engine: EngineProcess) -> None:
    alert = uid("alert")
    engine.register(
        {"id": alert, "nodes": [{"id": "got", "type": "transform", "config": {"expression": "input"}}]}
    )
    failing = uid("failing")
    engine.register(
        {
            "id": failing,
            "on_failure": {"workflow_id": alert},
            "nodes": [{"id": "x", "type": "transform", "config": {"expression": "$error('no')"}}],
        }
    )
    status, body = engine.start_execution(failing, {"n": 1}, wait=30)
    assert status == 200, body
    assert body["status"] == "failed"
    run = body["id"]
    error_run = wait_found(engine, f"onfail-{run}")
    assert error_run["status"] == "success"
    assert error_run["workflow_id"] == alert
    assert error_run["error_of"] == run
    got = error_run["nodes"]["got"]["output"]
    assert got["execution_id"] == run
    assert got["workflow_id"] == failing
    assert got["failed_node"] == "x"
    assert got["error"]["error_class"] == body["nodes"]["x"]["error"]["error_class"]
    assert got["error"]["message"] == body["nodes"]["x"]["error"]["message"]
    assert [r["id"] for r in runs_of(engine, alert)] == [f"onfail-{run}"]


def test_a_failing_error_workflow_starts_no_other(engine: EngineProcess) -> None:
    # an error workflow that fails and names itself: its own failure must not start it again
    alert = uid("alert")
    engine.register(
        {
            "id": alert,
            "on_failure": {"workflow_id": alert},
            "nodes": [{"id": "x", "type": "transform", "config": {"expression": "$error('alert down')"}}],
        }
    )
    failing = uid("failing")
    engine.register(
        {
            "id": failing,
            "on_failure": {"workflow_id": alert},
            "nodes": [{"id": "x", "type": "transform", "config": {"expression": "$error('no')"}}],
        }
    )
    status, body = engine.start_execution(failing, {}, wait=30)
    assert status == 200 and body["status"] == "failed", body
    error_run = wait_found(engine, f"onfail-{body['id']}")
    assert error_run["status"] == "failed"
    # a later run of the same engine finishing proves the engine moved past that failure's
    # transaction: the start it would have produced was in it
    later = uid("later")
    engine.register({"id": later, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]})
    for _ in range(3):
        assert engine.start_execution(later, {}, wait=30)[1]["status"] == "success"
    assert [r["id"] for r in runs_of(engine, alert)] == [f"onfail-{body['id']}"]
    status, _ = call("GET", f"{engine.url}/api/executions/onfail-onfail-{body['id']}", headers=engine.auth())
    assert status == 404


def test_on_failure_must_name_a_registered_workflow(engine: EngineProcess) -> None:
    body = {
        "id": uid("wf"),
        "on_failure": {"workflow_id": uid("missing")},
        "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}],
    }
    status, answer = call("POST", f"{engine.url}/api/workflows", body, engine.auth())
    assert status == 400, answer
    assert "on_failure.workflow_id" in answer["error"]["message"]
    body["on_failure"] = {"workflow_id": "not valid!"}
    status, answer = call("POST", f"{engine.url}/api/workflows", body, engine.auth())
    assert status == 400, answer


def test_a_run_that_times_out_starts_its_error_workflow(engine: EngineProcess) -> None:
    alert = uid("alert")
    engine.register(
        {"id": alert, "nodes": [{"id": "got", "type": "transform", "config": {"expression": "input"}}]}
    )
    slow = uid("slow")
    engine.register(
        {
            "id": slow,
            "timeout_seconds": 2,
            "on_failure": {"workflow_id": alert},
            "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 300}}],
        }
    )
    status, body = engine.start_execution(slow, {})
    assert status == 202, body
    assert engine.wait_status(body["id"])["status"] == "failed"
    got = wait_found(engine, f"onfail-{body['id']}")["nodes"]["got"]["output"]
    assert got["failed_node"] is None
    assert got["error"]["error_class"] == "timeout"
