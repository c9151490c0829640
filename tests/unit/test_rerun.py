"""Reruns, the pure part: which outputs a rerun reuses (``core/rerun.py``), and the decider
starting a run that reuses them (``node_reused``, nothing dispatched for those nodes)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.events import EventType
from linkflow_stream.core.rerun import BROKEN, reusable_outputs
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus
from linkflow_stream.core.workflow import Dependency, NodeDefinition, WorkflowDefinition
from tests.unit.conftest import Factories, at

E = EventType


def diamond(lf: Factories, **d_config: Any) -> WorkflowDefinition:
    return lf.workflow(
        lf.node("a", "http"),
        lf.node("b", "http", depends_on=["a"]),
        lf.node("c", "http", depends_on=["a"]),
        lf.node("d", "http", depends_on=["b", "c"], **d_config),
        lf.node("x", "http"),
    )


def failed_at_c(lf: Factories) -> ExecutionState:
    run = lf.run(diamond(lf))
    run.feed(lf.ok("a", output={"a": 1}), at(1))
    run.feed(lf.ok("x", output="x"), at(1))
    run.feed(lf.ok("b", output={"b": 2}), at(2))
    run.feed(lf.fail("c"), at(3))
    assert run.s.status is ExecutionStatus.FAILED
    assert run.s.nodes["d"].status is NodeStatus.SKIPPED
    return run.s


def test_from_failed_reuses_what_is_not_downstream_of_the_failure(lf: Factories) -> None:
    original = failed_at_c(lf)
    assert reusable_outputs(original, original.workflow) == {"a": {"a": 1}, "b": {"b": 2}, "x": "x"}


def test_a_node_changed_in_the_latest_version_runs_again_and_so_does_what_follows(lf: Factories) -> None:
    original = failed_at_c(lf)
    changed = lf.workflow(
        lf.node("a", "http"),
        lf.node("b", "http", depends_on=["a"], config={"method": "GET", "url": "http://127.0.0.1:9/new"}),
        lf.node("c", "http", depends_on=["a"]),
        lf.node("d", "http", depends_on=["b", "c"]),
        lf.node("e", "http", depends_on=["x"]),  # new in this version: it has no output to reuse
        lf.node("x", "http"),
    )
    assert reusable_outputs(original, changed) == {"a": {"a": 1}, "x": "x"}


def test_a_run_cancelled_mid_way_reuses_only_finished_work_above_the_cancelled_nodes(lf: Factories) -> None:
    run = lf.run(diamond(lf))
    run.feed(lf.ok("a", output=1), at(1))
    run.feed(lf.cancel("stop"), at(2))  # b, c and x were running: cancelled
    assert reusable_outputs(run.s, run.s.workflow) == {"a": 1}


def test_a_rerun_start_reuses_before_it_dispatches(lf: Factories) -> None:
    original = failed_at_c(lf)
    reused = reusable_outputs(original, original.workflow)
    start = lf.start(original.workflow, execution_id="e2").model_copy(
        update={"reused": reused, "links": {"rerun_of": "e1"}}
    )
    run = lf.run()
    events = run.feed(start, at(10))
    kinds = [(e.type, e.node_id) for e in events]
    assert kinds == [
        (E.EXECUTION_CREATED, None),
        (E.EXECUTION_STARTED, None),
        (E.NODE_REUSED, "a"),
        (E.NODE_REUSED, "b"),
        (E.NODE_REUSED, "x"),
        (E.NODE_STARTED, "c"),
    ]
    assert all(e.reason == "reused from e1" for e in events if e.type is E.NODE_REUSED)
    s = run.s
    assert s.links == {"rerun_of": "e1"}
    assert {n: (st.status, st.reused) for n, st in s.nodes.items() if st.reused} == {
        "a": (NodeStatus.SUCCESS, True),
        "b": (NodeStatus.SUCCESS, True),
        "x": (NodeStatus.SUCCESS, True),
    }
    assert s.nodes["b"].output == {"b": 2}
    run.feed(lf.ok("c", output=3), at(11))
    assert [n for n, st in run.s.nodes.items() if st.status is NodeStatus.RUNNING] == ["d"]


def test_a_rerun_that_reuses_everything_ends_at_once(lf: Factories) -> None:
    wf = lf.workflow(lf.node("a", "http"))
    start = lf.start(wf).model_copy(update={"reused": {"a": 7}})
    run = lf.run()
    events = run.feed(start, at())
    assert [e.type for e in events][-2:] == [E.NODE_REUSED, E.EXECUTION_SUCCEEDED]


@st.composite
def finished_runs(draw: st.DrawFn) -> tuple[ExecutionState, WorkflowDefinition]:
    """A random DAG, each node ended in a random way, and a next version with some nodes changed."""
    count = draw(st.integers(min_value=1, max_value=8))
    nodes = []
    for i in range(count):
        deps = (
            draw(st.lists(st.integers(min_value=0, max_value=max(0, i - 1)), max_size=3, unique=True))
            if i
            else []
        )
        nodes.append(NodeDefinition(id=f"n{i}", type="http", depends_on=tuple(f"n{d}" for d in deps)))
    wf = WorkflowDefinition(id="w", nodes=tuple(nodes), created_at=at())
    ends = st.sampled_from([NodeStatus.SUCCESS, NodeStatus.FAILED, NodeStatus.CANCELLED, NodeStatus.SKIPPED])
    states = {n.id: NodeState(status=draw(ends), output=n.id) for n in nodes}
    original = ExecutionState(
        id="e", workflow=wf, status=ExecutionStatus.FAILED, input={}, created_at=at(), seq=9, nodes=states
    )
    changed = draw(st.sets(st.sampled_from([n.id for n in nodes])))
    latest = wf.model_copy(
        update={
            "nodes": tuple(
                n.model_copy(update={"timeout_seconds": 9.0}) if n.id in changed else n for n in nodes
            )
        }
    )
    return original, draw(st.sampled_from([wf, latest]))


@settings(max_examples=300, deadline=None)
@given(finished_runs())
def test_reused_nodes_succeeded_sit_above_no_failure_and_have_reused_dependencies(
    case: tuple[ExecutionState, WorkflowDefinition],
) -> None:
    original, workflow = case
    reused = reusable_outputs(original, workflow)
    parents = {n.id: {Dependency.parse(d).node for d in n.depends_on} for n in original.workflow.nodes}

    def ancestors(node_id: str) -> set[str]:
        out: set[str] = set()
        for p in parents[node_id]:
            out |= {p, *ancestors(p)}
        return out

    old = {n.id: n for n in original.workflow.nodes}
    for node in workflow.nodes:
        if node.id in reused:
            assert original.nodes[node.id].status is NodeStatus.SUCCESS
            assert reused[node.id] == original.nodes[node.id].output
            assert old[node.id] == node  # unchanged in the version the rerun runs
            assert not any(original.nodes[a].status in BROKEN for a in ancestors(node.id))
            assert all(Dependency.parse(d).node in reused for d in node.depends_on)
        elif (
            original.nodes[node.id].status is NodeStatus.SUCCESS
            and old[node.id] == node
            and not any(original.nodes[a].status in BROKEN for a in ancestors(node.id))
        ):
            # good but not reused: only because something it depends on runs again
            assert not all(Dependency.parse(d).node in reused for d in node.depends_on)
