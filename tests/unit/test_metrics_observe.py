"""``Metrics.observe``: the series an orchestrator step counts, with the labelled children it keeps
in a dict after their first use (each series still its own)."""

from __future__ import annotations

import asyncio
from typing import Any

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings

NOW = from_millis(1_800_000_000_000)
NODES: list[dict[str, Any]] = [
    {"id": "a", "type": "transform", "config": {"expression": "input.x * 2"}},
    {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a + 1"}},
    {"id": "c", "type": "condition", "depends_on": ["b"], "config": {"expression": "nodes.b > 100"}},
]


def run(stepper: Stepper, workflow_id: str, execution_id: str, x: int) -> Step:
    wf = parse_workflow({"id": workflow_id, "nodes": NODES}, stepper.registry, version=1, created_at=NOW)
    request = StartExecution(execution_id=execution_id, workflow=wf, input={"x": x}, requested_at=NOW)
    return asyncio.run(stepper.step(None, request, NOW))


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_series_counts_its_own_transitions_across_steps() -> None:
    settings = Settings()
    registry = build_registry(settings)
    stepper = Stepper(registry, decider_config(registry, settings))
    metrics = Metrics(active=lambda: 0)
    for i, workflow_id in enumerate(["wf-1", "wf-1", "wf-2"]):
        step = run(stepper, workflow_id, f"e{i}", i)
        assert step.state is not None and step.state.status.value == "success"
        metrics.observe(step.state, step.events)

    wf1, wf2 = {"workflow_id": "wf-1"}, {"workflow_id": "wf-2"}
    transform, condition = {"node_type": "transform"}, {"node_type": "condition"}
    expected = [
        ("linkflow_executions_started_total", {**wf1, "priority": "normal"}, 2),
        ("linkflow_executions_started_total", {**wf2, "priority": "normal"}, 1),
        ("linkflow_executions_finished_total", {**wf1, "status": "success"}, 2),
        ("linkflow_executions_finished_total", {**wf2, "status": "success"}, 1),
        ("linkflow_execution_duration_seconds_count", {**wf1, "status": "success"}, 2),
        ("linkflow_node_executions_total", {**transform, "outcome": "success"}, 6),
        ("linkflow_node_executions_total", {**condition, "outcome": "success"}, 3),
        ("linkflow_node_duration_seconds_count", {**transform, "outcome": "success"}, 6),
        ("linkflow_node_duration_seconds_count", {**condition, "outcome": "success"}, 3),
    ]
    assert [sample(metrics, name, labels) for name, labels, _ in expected] == [n for _, _, n in expected]
