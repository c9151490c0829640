"""Error workflows (ADR 0036): a failed run's step starts its workflow's error workflow, once,
with a fixed id; a run of the error workflow starts none; a timed-out run starts one too."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeError, NodeResult, StartExecution
from linkflow_stream.core.run_links import ERROR_OF, error_run_id
from linkflow_stream.core.start_request import EXECUTION_ID, StartRequest
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings

NOW = from_millis(1_800_000_000_000)
HTTP = {"id": "h", "type": "http", "config": {"url": "https://example.com/x"}}


def stepper() -> Stepper:
    registry = build_registry(Settings())
    return Stepper(registry, decider_config(registry, Settings()))


def started(
    orch: Stepper, body: dict[str, Any], execution_id: str = "e1", links: dict[str, str] | None = None
) -> Step:
    wf = parse_workflow(body, orch.registry, version=1, created_at=NOW)
    request = StartExecution(
        execution_id=execution_id, workflow=wf, input={"x": 1}, requested_at=NOW, links=links or {}
    )
    return asyncio.run(orch.step(None, request, NOW))


def starts(step: Step) -> list[StartRequest]:
    return [o.record for o in step.outputs if isinstance(o.record, StartRequest)]


def fail(orch: Stepper, step: Step, execution_id: str = "e1") -> Step:
    result = NodeResult(
        execution_id=execution_id,
        node_id="h",
        attempt=1,
        ok=False,
        error=NodeError(error_class="http_status", message="HTTP 500"),
        started_at=NOW,
        finished_at=NOW,
    )
    return asyncio.run(orch.step(step.state, result, NOW + timedelta(seconds=1)))


def test_a_failed_run_starts_its_error_workflow_with_the_failure() -> None:
    orch = stepper()
    step = started(orch, {"id": "wf", "nodes": [HTTP], "on_failure": {"workflow_id": "alert"}})
    assert starts(step) == []
    failed = fail(orch, step)
    [request] = starts(failed)
    assert request == StartRequest(
        workflow_id="alert",
        input={
            "execution_id": "e1",
            "workflow_id": "wf",
            "failed_node": "h",
            "error": {"error_class": "http_status", "message": "HTTP 500"},
        },
        execution_id="onfail-e1",
        links={ERROR_OF: "e1"},
    )
    [out] = [o for o in failed.outputs if isinstance(o.record, StartRequest)]
    assert (out.topic, out.key) == (topic_names.START, "onfail-e1")
    # deciding the same input again derives the same record
    assert starts(fail(orch, step)) == [request]


def test_a_run_of_the_error_workflow_starts_none() -> None:
    orch = stepper()
    body = {"id": "wf", "nodes": [HTTP], "on_failure": {"workflow_id": "wf"}}
    step = started(orch, body, links={ERROR_OF: "e0"})
    assert starts(fail(orch, step)) == []


def test_no_error_workflow_without_on_failure_or_when_cancelled() -> None:
    orch = stepper()
    assert starts(fail(orch, started(orch, {"id": "wf", "nodes": [HTTP]}))) == []
    step = started(orch, {"id": "wf", "nodes": [HTTP], "on_failure": {"workflow_id": "alert"}})
    cancel = ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL)
    assert starts(asyncio.run(orch.step(step.state, cancel, NOW))) == []


def test_a_timed_out_run_starts_its_error_workflow_with_class_timeout() -> None:
    orch = stepper()
    body = {"id": "wf", "timeout_seconds": 5, "nodes": [HTTP], "on_failure": {"workflow_id": "alert"}}
    step = started(orch, body)
    due = NOW + timedelta(seconds=5)
    fired = ExecutionCommand(
        execution_id="e1", kind=CommandKind.TIMER_FIRED, timer_id="execution_timeout", due_at=due
    )
    [request] = starts(asyncio.run(orch.step(step.state, fired, due)))
    assert request.input["failed_node"] is None
    assert request.input["error"] == {"error_class": "timeout", "message": "execution timed out"}


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="abcXYZ09_.-", min_size=1, max_size=128))
def test_error_run_ids_are_valid_fixed_and_distinct(execution_id: str) -> None:
    run_id = error_run_id(execution_id)
    assert EXECUTION_ID.fullmatch(run_id)
    assert run_id == error_run_id(execution_id)
    assert run_id != execution_id
    assert run_id != error_run_id(execution_id + "x")


def test_on_failure_must_name_a_well_formed_id() -> None:
    import pytest

    from linkflow_stream.core.errors import ValidationError

    with pytest.raises(ValidationError, match=r"on_failure\.workflow_id"):
        parse_workflow(
            {"id": "wf", "nodes": [HTTP], "on_failure": {"workflow_id": "no spaces"}},
            stepper().registry,
            version=1,
            created_at=NOW,
        )
