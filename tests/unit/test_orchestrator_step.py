"""The orchestrator step: inline evaluation, task dispatch and input/output mapping, without Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import EventType
from linkflow_stream.core.messages import NodeResult, NodeTask, StartExecution
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings

NOW = from_millis(1_800_000_000_000)


def orchestrator() -> Stepper:
    settings = Settings()
    registry = build_registry(settings)
    return Stepper(registry, decider_config(registry, settings))


def start(nodes: list[dict[str, Any]], input_data: Any = None) -> tuple[Stepper, Step]:
    orch = orchestrator()
    wf = parse_workflow({"id": "wf", "nodes": nodes}, orch.registry, version=1, created_at=NOW)
    request = StartExecution(execution_id="e1", workflow=wf, input=input_data or {}, requested_at=NOW)
    return orch, asyncio.run(orch.step(None, request, NOW))


def tasks(step: Step) -> list[NodeTask]:
    return [o.record for o in step.outputs if isinstance(o.record, NodeTask)]


def test_inline_nodes_finish_in_the_step_that_starts_them() -> None:
    _, step = start(
        [
            {"id": "a", "type": "transform", "config": {"expression": "input.x * 2"}},
            {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a + 1"}},
        ],
        {"x": 20},
    )
    assert step.state is not None
    assert step.state.status.value == "success"
    assert step.state.nodes["b"].output == 41
    assert [o.topic for o in step.outputs] == ["linkflow.events"] * len(step.events)


def test_input_mapping_computes_task_config_from_earlier_nodes() -> None:
    _, step = start(
        [
            {"id": "a", "type": "transform", "config": {"expression": "{'id': 7}"}},
            {
                "id": "h",
                "type": "http",
                "depends_on": ["a"],
                "config": {"method": "POST"},
                "input": {
                    "url": "'https://api.example.com/items/' & $string(nodes.a.id)",
                    "json": "{'n': nodes.a.id}",
                },
            },
        ]
    )
    [task] = tasks(step)
    assert task.config == {"method": "POST", "url": "https://api.example.com/items/7", "json": {"n": 7}}
    assert task.input == {"input": None, "nodes": {}}, "http reads its config only (ADR 0039)"


def test_a_code_task_carries_the_run_input_and_earlier_outputs() -> None:
    _, step = start(
        [
            {"id": "a", "type": "transform", "config": {"expression": "{'id': 7}"}},
            {
                "id": "c",
                "type": "code",
                "depends_on": ["a"],
                "config": {"source": "def main(data):\n    return data['nodes']['a']['id']\n"},
            },
        ]
    )
    [task] = tasks(step)
    assert task.input["nodes"] == {"a": {"id": 7}}


def test_mapped_config_is_validated_at_dispatch() -> None:
    _, step = start(
        [
            {"id": "h", "type": "http", "config": {}, "input": {"url": "'not a url'"}},
        ]
    )
    assert step.state is not None
    assert step.state.status.value == "failed"
    error = step.state.nodes["h"].error
    assert error is not None
    assert error.error_class == "validation"
    assert "after input mapping, config.url" in error.message
    assert tasks(step) == []


def test_output_mapping_reshapes_inline_and_task_results() -> None:
    orch, step = start(
        [
            {
                "id": "a",
                "type": "transform",
                "config": {"expression": "{'n': 2, 'junk': true}"},
                "output": "output.n",
            },
            {
                "id": "h",
                "type": "http",
                "depends_on": ["a"],
                "config": {"url": "https://example.org/"},
                "output": "{'code': output.status, 'seen': nodes.a}",
            },
        ]
    )
    assert step.state is not None
    assert step.state.nodes["a"].output == 2
    result = NodeResult(
        execution_id="e1",
        node_id="h",
        attempt=1,
        ok=True,
        output={"status": 201, "body": "x"},
        started_at=NOW,
        finished_at=NOW,
    )
    done = asyncio.run(orch.step(step.state, result, NOW))
    assert done.state is not None
    assert done.state.nodes["h"].output == {"code": 201, "seen": 2}
    assert done.state.status.value == "success"


def test_an_output_mapping_error_fails_the_node_as_expression_error() -> None:
    _, step = start(
        [
            {"id": "a", "type": "transform", "config": {"expression": "1"}, "output": "$number('x')"},
        ]
    )
    assert step.state is not None
    error = step.state.nodes["a"].error
    assert error is not None
    assert (step.state.status.value, error.error_class) == ("failed", "expression_error")


def test_a_non_boolean_condition_fails_the_node() -> None:
    _, step = start([{"id": "c", "type": "condition", "config": {"expression": "'yes'"}}])
    assert step.state is not None
    error = step.state.nodes["c"].error
    assert error is not None
    assert error.error_class == "expression_error"
    assert "boolean" in error.message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input", {"url": "{ broken"}, "node 'h': input.url: JSONata syntax error"),
        ("output", "{ broken", "node 'h': output: JSONata syntax error"),
    ],
)
def test_mapping_syntax_errors_are_refused_at_registration(field: str, value: Any, message: str) -> None:
    orch = orchestrator()
    node = {"id": "h", "type": "http", "config": {"url": "https://example.org/"}, field: value}
    with pytest.raises(ValidationError, match=message):
        parse_workflow({"id": "wf", "nodes": [node]}, orch.registry, version=1, created_at=NOW)


def test_every_started_task_produces_exactly_one_task_record() -> None:
    _, step = start(
        [
            {"id": "h1", "type": "http", "config": {"url": "https://example.org/1"}},
            {"id": "h2", "type": "http", "config": {"url": "https://example.org/2"}},
        ]
    )
    started = [e.node_id for e in step.events if e.type is EventType.NODE_STARTED]
    assert sorted(t.node_id for t in tasks(step)) == sorted(started) == ["h1", "h2"]


def test_a_condition_on_a_missing_field_is_false_like_reference_jsonata() -> None:
    _, step = start(
        [
            {"id": "a", "type": "transform", "config": {"expression": "{'n': input.n}"}},
            {"id": "c", "type": "condition", "depends_on": ["a"], "config": {"expression": "nodes.a.n > 10"}},
            {"id": "big", "type": "transform", "depends_on": ["c:true"], "config": {"expression": "'big'"}},
            {
                "id": "small",
                "type": "transform",
                "depends_on": ["c:false"],
                "config": {"expression": "'small'"},
            },
        ],
        {"key": "value"},
    )
    assert step.state is not None
    assert step.state.nodes["c"].output is False
    assert (step.state.status.value, step.state.nodes["small"].output) == ("success", "small")


def test_an_inline_output_over_the_cap_fails_its_node_like_a_task_output() -> None:
    settings = Settings()
    registry = build_registry(settings)
    stepper = Stepper(registry, decider_config(registry, settings), output_max_bytes=1024)
    wf = parse_workflow(
        {
            "id": "wf",
            "nodes": [{"id": "big", "type": "transform", "config": {"expression": "$pad('', 2000, 'x')"}}],
        },
        registry,
        version=1,
        created_at=NOW,
    )
    request = StartExecution(execution_id="e1", workflow=wf, input={}, requested_at=NOW)
    step = asyncio.run(stepper.step(None, request, NOW))
    assert step.state is not None and step.state.status.value == "failed"
    error = step.state.nodes["big"].error
    assert error is not None and error.error_class == "resource_limit" and "1024-byte limit" in error.message
