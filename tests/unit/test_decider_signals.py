"""The decider and signals (ADR 0035): a ``wait_event`` node waits on a ``signal_timeout`` timer;
a signal is kept by the run (``signal_received``) and taken by the first node waiting on its name,
whose output is the payload; a signal that comes first waits for its node; an id counts once;
the timeout fails the node with class ``timeout`` (retried under a policy) only if no signal came."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.decider import NodeKind
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, Signal
from linkflow_stream.core.signals import correlation_key, key_text
from linkflow_stream.core.state import ExecutionStatus, NodeStatus, TimerKind
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.nodes.wait_event import WaitEventNode
from tests.unit.conftest import CONFIG, Factories, Run, at

E = EventType
SIGNALS = dataclasses.replace(
    CONFIG, kinds={**CONFIG.kinds, "wait_event": NodeKind(Dispatch.SIGNAL, 30 * 86_400.0)}
)


def sig(name: str, signal_id: str, payload: Any = None, execution_id: str = "e1") -> ExecutionCommand:
    return ExecutionCommand(
        execution_id=execution_id,
        kind=CommandKind.SIGNAL,
        signal=Signal(name=name, id=signal_id, payload=payload),
    )


def waiter(
    lf: Factories, node_id: str = "w", name: str = "approved", depends_on: tuple[str, ...] = (), **cfg: Any
) -> NodeDefinition:
    config = {"name": name, "timeout_seconds": 10, **cfg}
    return lf.node(node_id, "wait_event", depends_on, config)


def started(lf: Factories, *nodes: NodeDefinition, input_: Any = None) -> Run:
    wf = lf.workflow(*nodes)
    run = Run(SIGNALS)
    run.feed(lf.start(wf, input_=input_), at())
    return run


def test_a_wait_event_node_waits_on_a_signal_timeout_timer_with_its_key(lf: Factories) -> None:
    run = started(
        lf, waiter(lf, correlation_key="input.order & '-' & $string(input.n)"), input_={"order": "o", "n": 2}
    )
    started_event = next(e for e in run.log if e.type is E.NODE_STARTED)
    assert (started_event.dispatch, started_event.correlation_key) == (Dispatch.SIGNAL, "o-2")
    assert started_event.due_at == at(10)
    timer = run.s.timers[lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1)]
    assert (timer.kind, timer.due_at) == (TimerKind.SIGNAL_TIMEOUT, at(10))
    assert run.s.nodes["w"].correlation_key == "o-2"


def test_a_signal_completes_the_waiting_node_with_its_payload(lf: Factories) -> None:
    run = started(lf, waiter(lf), lf.node("t", "transform", ["w"], {"expression": "nodes.w.ok"}))
    events = run.feed(sig("approved", "s1", {"ok": True}), at(2))
    assert [e.type for e in events[:2]] == [E.SIGNAL_RECEIVED, E.NODE_SUCCEEDED]
    assert events[1].output == {"ok": True}
    assert events[1].signal == Signal(name="approved", id="s1")
    assert run.s.signals == () and run.s.signal_ids == ("s1",)
    assert run.s.nodes["w"].status is NodeStatus.SUCCESS
    assert lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1) not in run.s.timers
    assert run.s.nodes["t"].status is NodeStatus.RUNNING  # the inline node that follows


def test_a_signal_of_another_name_is_kept_and_does_not_complete_the_node(lf: Factories) -> None:
    run = started(lf, waiter(lf))
    events = run.feed(sig("rejected", "s1", 1), at(1))
    assert [e.type for e in events] == [E.SIGNAL_RECEIVED]
    assert run.s.nodes["w"].status is NodeStatus.RUNNING
    assert [s.id for s in run.s.signals] == ["s1"]


def test_an_early_signal_is_kept_and_taken_when_the_node_starts_waiting(lf: Factories) -> None:
    run = started(lf, lf.node("d", "wait"), waiter(lf, depends_on=("d",)))
    assert run.feed(sig("approved", "s1", "early"), at(0.5))[0].type is E.SIGNAL_RECEIVED
    assert run.s.nodes["w"].status is NodeStatus.PENDING
    events = run.feed(lf.fire(lf.timer_id(TimerKind.WAIT, "d", 1)), at(1.5))
    assert [(e.type, e.node_id) for e in events] == [
        (E.NODE_SUCCEEDED, "d"),
        (E.NODE_STARTED, "w"),
        (E.NODE_SUCCEEDED, "w"),
        (E.EXECUTION_SUCCEEDED, None),
    ]
    assert events[2].output == "early"
    assert run.s.signals == ()


def test_a_duplicate_signal_id_changes_nothing_even_after_it_was_consumed(lf: Factories) -> None:
    run = started(lf, waiter(lf, "w1"), waiter(lf, "w2", depends_on=("w1",)))
    assert run.feed(sig("approved", "s1", 1), at(1))[1].node_id == "w1"
    assert run.feed(sig("approved", "s1", 1), at(2)) == []  # a retry of the same signal
    assert run.s.nodes["w2"].status is NodeStatus.RUNNING
    events = run.feed(sig("approved", "s2", 2), at(3))
    assert [(e.type, e.node_id, e.output) for e in events[:2]] == [
        (E.SIGNAL_RECEIVED, None, None),
        (E.NODE_SUCCEEDED, "w2", 2),
    ]
    assert run.s.status is ExecutionStatus.SUCCESS


def test_two_nodes_waiting_on_one_name_take_one_signal_each_in_workflow_order(lf: Factories) -> None:
    run = started(lf, waiter(lf, "a"), waiter(lf, "b"))
    first = run.feed(sig("approved", "s1", 1), at(1))
    assert [(e.type, e.node_id) for e in first] == [(E.SIGNAL_RECEIVED, None), (E.NODE_SUCCEEDED, "a")]
    second = run.feed(sig("approved", "s2", 2), at(2))
    assert [(e.type, e.node_id) for e in second][:2] == [(E.SIGNAL_RECEIVED, None), (E.NODE_SUCCEEDED, "b")]


def test_the_timeout_fails_the_node_with_class_timeout(lf: Factories) -> None:
    run = started(lf, waiter(lf))
    timer = lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1)
    assert run.feed(lf.fire(timer, due_at=at(10)), at(9)) == []  # early
    events = run.feed(lf.fire(timer, due_at=at(10)), at(10))
    assert events[0].type is E.NODE_FAILED
    assert events[0].error is not None
    assert (events[0].error.error_class, events[0].error.retryable) == ("timeout", True)
    assert "no signal 'approved' within 10s" in events[0].error.message
    assert run.s.status is ExecutionStatus.FAILED


def test_a_timeout_under_a_retry_policy_waits_again_and_the_retry_takes_a_kept_signal(lf: Factories) -> None:
    node = waiter(lf).model_copy(update={"retry": lf.retry(max_attempts=2, initial=5)})
    run = started(lf, node)
    run.feed(lf.fire(lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1)), at(10))
    assert run.log[-1].type is E.NODE_RETRY_SCHEDULED
    # a signal while the node is parked for its retry is kept, not taken
    assert [e.type for e in run.feed(sig("approved", "s1", "late"), at(12))] == [E.SIGNAL_RECEIVED]
    events = run.feed(lf.fire(lf.timer_id(TimerKind.RETRY, "w", 1)), at(15))
    assert [(e.type, e.attempt) for e in events] == [
        (E.NODE_STARTED, 2),
        (E.NODE_SUCCEEDED, 2),
        (E.EXECUTION_SUCCEEDED, None),
    ]
    assert run.s.nodes["w"].output == "late"


def test_a_fired_timeout_after_the_signal_is_stale(lf: Factories) -> None:
    run = started(lf, waiter(lf), waiter(lf, "other", name="other"))
    run.feed(sig("approved", "s1"), at(1))
    assert run.feed(lf.fire(lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1)), at(10)) == []


def test_a_key_that_cannot_be_computed_fails_the_node_as_it_starts(lf: Factories) -> None:
    run = started(lf, waiter(lf, correlation_key="input.items"), input_={"items": [1, 2]})
    assert run.s.status is ExecutionStatus.FAILED
    failed = next(e for e in run.log if e.type is E.NODE_FAILED)
    assert failed.error is not None and failed.error.error_class == "expression_error"
    assert [e.type for e in run.log].count(E.EXECUTION_SUCCEEDED) == 0


def test_signals_after_the_run_ended_change_nothing(lf: Factories) -> None:
    run = started(lf, waiter(lf))
    run.feed(lf.cancel(), at(1))
    assert run.feed(sig("approved", "s1"), at(2)) == []


@pytest.mark.parametrize(
    ("value", "text"), [("a", "a"), (7, "7"), (2.5, "2.5"), (True, "true"), (None, None)]
)
def test_key_text_writes_strings_and_numbers_alike_on_both_sides(value: Any, text: str | None) -> None:
    assert key_text(value) == text


def test_key_text_refuses_objects_and_lists() -> None:
    with pytest.raises(TypeError):
        key_text({"a": 1})
    with pytest.raises(ValueError, match="at most"):
        key_text("k" * 300)
    assert correlation_key(None, {}, now=at(), seed="s") is None
    assert correlation_key("input.k", {"input": {"k": 3}}, now=at(), seed="s") == "3"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "a", "timeout_seconds": -1}, "timeout_seconds"),
        ({"name": "a", "timeout_seconds": True}, "timeout_seconds"),
        ({"name": "a", "correlation_key": "("}, "correlation_key"),
        ({"name": "a", "other": 1}, "other"),
    ],
)
def test_wait_event_config_is_checked(config: dict[str, Any], field: str) -> None:
    with pytest.raises(Exception, match=field):
        WaitEventNode().validate(config)


def test_a_good_wait_event_config_passes() -> None:
    WaitEventNode().validate(
        {"name": "order.paid:v1", "timeout_seconds": 3600, "correlation_key": "input.id"}
    )


# -- properties ---------------------------------------------------------------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("signal"), st.sampled_from(["go", "other"]), st.sampled_from(["s1", "s2", "s3"])),
        st.tuples(st.just("wait_over"), st.none(), st.none()),
        st.tuples(st.just("timeout"), st.none(), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(steps=_steps, timeout_first=st.booleans())
def test_each_signal_is_taken_at_most_once_and_the_timeout_only_without_one(
    steps: list[tuple[str, str | None, str | None]], timeout_first: bool
) -> None:
    """A wait, then a wait_event on ``go``: signals (with repeated ids) arrive before or while it
    waits, the wait ends, its timeout fires, in any order. Every id is received once and taken at
    most once; the node succeeds iff a ``go`` signal arrived before its timeout fired, with the
    first such signal's payload; the timeout fails it only if none had."""
    lf = Factories()
    wf = WorkflowDefinition(
        id="wf",
        nodes=(
            NodeDefinition(id="d", type="wait", config={"seconds": 1}),
            NodeDefinition(
                id="w", type="wait_event", depends_on=("d",), config={"name": "go", "timeout_seconds": 5}
            ),
        ),
        created_at=at(-10),
    )
    run = Run(SIGNALS)
    run.feed(lf.start(wf), at())
    now = 0.0
    first_go: str | None = None
    seen: set[str] = set()
    timed_out = False
    for action, name, signal_id in steps:
        now += 0.5
        if action == "signal":
            assert name is not None and signal_id is not None
            fresh = signal_id not in seen
            events = run.feed(sig(name, signal_id, payload=signal_id), at(now))
            if run.s.status.terminal and not events:
                continue
            assert bool(events) == fresh, "a repeated id changed something, or a new one nothing"
            seen.add(signal_id)
            if fresh and name == "go" and first_go is None and not timed_out:
                first_go = signal_id
        elif action == "wait_over":
            run.feed(lf.fire(lf.timer_id(TimerKind.WAIT, "d", 1)), at(max(now, 1)))
            now = max(now, 1)
        else:
            timer = lf.timer_id(TimerKind.SIGNAL_TIMEOUT, "w", 1)
            if timer in run.s.timers:
                due = run.s.timers[timer].due_at
                waiting_before = run.s.nodes["w"].status is NodeStatus.RUNNING
                when = max(due, at(now))
                events = run.feed(lf.fire(timer), when)
                now = (when - at()).total_seconds()
                if waiting_before and events:
                    timed_out = True
                    assert not any(s.name == "go" for s in run.s.signals), "timed out with a go signal kept"
    received = [e.signal.id for e in run.log if e.type is E.SIGNAL_RECEIVED and e.signal]
    taken = [e.signal.id for e in run.log if e.type is E.NODE_SUCCEEDED and e.signal]
    assert len(received) == len(set(received))
    assert len(taken) <= 1
    node = run.s.nodes["w"]
    if node.status is NodeStatus.SUCCESS:
        assert taken == [first_go] and node.output == first_go
        assert not timed_out
    if timed_out:
        assert node.status is NodeStatus.FAILED and node.error is not None
        assert node.error.error_class == "timeout"
        assert taken == []
    if first_go is not None and run.s.nodes["d"].status is NodeStatus.SUCCESS and not timed_out:
        assert node.status is NodeStatus.SUCCESS, "a go signal was kept but not taken"


def test_a_signal_while_paused_completes_the_waiting_node_and_what_follows_waits_for_resume(
    lf: Factories,
) -> None:
    run = started(lf, waiter(lf), lf.node("h", "http", ["w"]))
    run.feed(ExecutionCommand(execution_id="e1", kind=CommandKind.PAUSE), at(1))
    assert run.s.status is ExecutionStatus.PAUSED
    events = run.feed(sig("approved", "s1", "while paused"), at(2))
    assert [(e.type, e.node_id) for e in events] == [(E.SIGNAL_RECEIVED, None), (E.NODE_SUCCEEDED, "w")]
    assert run.s.nodes["h"].status is NodeStatus.PENDING  # a paused run starts nothing
    resumed = run.feed(ExecutionCommand(execution_id="e1", kind=CommandKind.RESUME), at(3))
    assert [(e.type, e.node_id) for e in resumed] == [(E.EXECUTION_RESUMED, None), (E.NODE_STARTED, "h")]
