"""Property tests of the decider: random small DAGs, random input sequences, no illegal transition.

Each example builds a workflow of 2 to 7 nodes (transform, condition, wait, http; random acyclic
``depends_on``, condition branches included), starts it, feeds a random sequence of inputs
(results ok or failed for random nodes and attempts, fired timers that exist or not, cancels,
redeliveries of earlier inputs), checks every decision, then answers every open node so the
run must end.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, Input, decide
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeStatus, TimerKind, apply, evolve
from linkflow_stream.core.workflow import Dependency, NodeDefinition, RetryPolicy, WorkflowDefinition
from linkflow_stream.kafka import codec

NODE_TYPES = ("transform", "condition", "wait", "http")
CONFIGS: dict[str, dict[str, Any]] = {
    "transform": {"expression": "1"},
    "condition": {"expression": "true"},
    "http": {"url": "https://example.com/"},
}
LEGAL = {
    NodeStatus.PENDING: {NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED},
    NodeStatus.RUNNING: {NodeStatus.RUNNING, NodeStatus.SUCCESS, NodeStatus.FAILED, NodeStatus.CANCELLED},
}
OPEN = (NodeStatus.PENDING, NodeStatus.RUNNING)
EXECUTION_END = {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
NO_PATH = "no dependency path was taken"
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 4),
    initial_delay_seconds=st.sampled_from([0.0, 1.0, 2.5]),
    multiplier=st.sampled_from([1.0, 2.0]),
    max_delay_seconds=st.sampled_from([1.0, 60.0]),
)
retry_policies = st.one_of(st.none(), _policies, _policies)  # two in three nodes retry


@st.composite
def workflows(draw: st.DrawFn) -> WorkflowDefinition:
    count = draw(st.integers(2, 7))
    nodes: list[NodeDefinition] = []
    for i in range(count):
        type_ = draw(st.sampled_from(NODE_TYPES))
        depends_on: list[str] = []
        for j in draw(st.lists(st.integers(0, i - 1), unique=True, max_size=min(i, 3))) if i else []:
            parent = nodes[j]
            choices = [parent.id]
            if parent.type == "condition":
                choices += [f"{parent.id}:true", f"{parent.id}:false"]
            depends_on.append(draw(st.sampled_from(choices)))
        config = {"seconds": draw(st.sampled_from([0, 1, 2.5]))} if type_ == "wait" else CONFIGS[type_]
        nodes.append(
            NodeDefinition(
                id=f"n{i}",
                type=type_,
                depends_on=tuple(depends_on),
                config=config,
                retry=draw(retry_policies) if type_ != "wait" else None,
                timeout_seconds=draw(st.none() | st.sampled_from([1.0, 10.0])) if type_ == "http" else None,
            )
        )
    # the order of the node list is not the topological order
    ordered = draw(st.permutations(nodes))
    return WorkflowDefinition(
        id="wf",
        nodes=tuple(ordered),
        created_at=_t0(),
        timeout_seconds=draw(st.none() | st.sampled_from([30.0, 600.0])),
    )


def _t0() -> datetime:
    return from_millis(1_700_000_000_000)


def readiness(state: ExecutionState, node: NodeDefinition) -> NodeStatus | None:
    """The dependency rule, read independently: wait while any dependency is open; run if one
    finished dependency was taken (a plain one, or a condition branch that matches); else skip."""
    deps = [Dependency.parse(d) for d in node.depends_on]
    if any(state.nodes[d.node].status in OPEN for d in deps):
        return None
    taken = [
        d
        for d in deps
        if state.nodes[d.node].status is NodeStatus.SUCCESS
        and (d.branch is None or state.nodes[d.node].output == d.branch)
    ]
    return NodeStatus.RUNNING if taken or not deps else NodeStatus.SKIPPED


class Checked:
    """A run whose every decision is checked against the decider's invariants."""

    def __init__(self, wf: WorkflowDefinition, config: DeciderConfig) -> None:
        self.wf = wf
        self.config = config
        self.state: ExecutionState | None = None
        self.log: list[ExecutionEvent] = []
        self.inputs: list[tuple[Input, datetime]] = []
        self.now = _t0()

    def feed(self, inp: Input, now: datetime) -> list[ExecutionEvent]:
        before = self.state
        events = decide(before, inp, now, self.config)
        assert decide(before, inp, now, self.config) == events, "decide is not deterministic"
        if before is not None and before.status.terminal:
            assert events == [], f"events after the execution ended: {events}"
        state = before
        for i, ev in enumerate(events):
            assert ev.execution_id == inp.execution_id
            assert ev.at == now, "an event's time is the input's time"
            assert ev.seq == (state.seq if state else 0) + 1, "seq must grow by exactly 1"
            if ev.type in EXECUTION_END:
                assert i == len(events) - 1, f"{ev.type} is not the last event of its decision"
            after = evolve(state, ev)  # raises EvolveError on an event that cannot follow
            if state is not None:
                self.check_transition(state, after, ev)
            self.check_state(after)
            state = after
        self.check_decision(before, inp, now, events)
        self.state = state
        self.log.extend(events)
        self.inputs.append((inp, now))
        # an input the state already reflects changes nothing, now or later (but a timer that
        # fired early was not applied: it counts once it is due)
        assert decide(state, inp, now, self.config) == [], f"re-applying {inp!r} emitted events"
        if events or not self.fired_early(before, inp, now):
            assert decide(state, inp, now + timedelta(seconds=1), self.config) == []
        return events

    @staticmethod
    def fired_early(state: ExecutionState | None, inp: Input, now: datetime) -> bool:
        if not isinstance(inp, ExecutionCommand) or inp.kind is not CommandKind.TIMER_FIRED or state is None:
            return False
        timer = state.timers.get(inp.timer_id or "")
        return timer is not None and now < timer.due_at

    def check_decision(
        self, before: ExecutionState | None, inp: Input, now: datetime, events: list[ExecutionEvent]
    ) -> None:
        """What the input may cause, judged against an independent reading of the rules."""
        if before is None or before.status.terminal:
            return
        if isinstance(inp, StartExecution):
            assert events == [], "a second start emitted events"
            return
        if isinstance(inp, NodeResult):
            node = before.nodes.get(inp.node_id)
            retrying = any(
                t.kind is TimerKind.RETRY and t.node_id == inp.node_id for t in before.timers.values()
            )
            current = node is not None and node.status is NodeStatus.RUNNING and node.attempts == inp.attempt
            if not current or retrying:
                assert events == [], f"a result that matches no current attempt emitted {events}"
                return
            assert events, "the current attempt's result was ignored"
            first = events[0]
            assert (first.node_id, first.attempt) == (inp.node_id, inp.attempt)
            if inp.ok:
                assert first.type is EventType.NODE_SUCCEEDED
                assert first.output == inp.output
            else:
                policy = before.workflow.node(inp.node_id).retry
                retry = (
                    inp.error is not None
                    and inp.error.retryable
                    and policy is not None
                    and inp.attempt < policy.max_attempts
                )
                assert first.type is (EventType.NODE_RETRY_SCHEDULED if retry else EventType.NODE_FAILED)
                assert (len(events) == 1) if retry else (events[-1].type is EventType.EXECUTION_FAILED)
        elif inp.kind is CommandKind.CANCEL:
            assert events[-1].type is EventType.EXECUTION_CANCELLED
        elif inp.timer_id not in before.timers:
            assert events == [], f"stale timer {inp.timer_id!r} emitted {events}"
        elif now < before.timers[inp.timer_id].due_at:
            assert events == [], f"timer {inp.timer_id!r} fired before it was due and emitted {events}"
        else:
            assert events, f"timer {inp.timer_id!r} fired and changed nothing"
        if self.state_after_is_quiet(events):
            # every dependency rule applied: no pending node may be left ready or excluded
            state = before
            for ev in events:
                state = evolve(state, ev)
            assert state is not None
            for node in state.workflow.nodes:
                if state.nodes[node.id].status is NodeStatus.PENDING:
                    assert readiness(state, node) is None, f"{node.id} left pending though it is decided"

    @staticmethod
    def state_after_is_quiet(events: list[ExecutionEvent]) -> bool:
        return not any(e.type in EXECUTION_END for e in events)

    def check_transition(self, before: ExecutionState, after: ExecutionState, event: ExecutionEvent) -> None:
        for node_id, old in before.nodes.items():
            new = after.nodes[node_id]
            if node_id != event.node_id:
                assert new == old, f"{event.type} for {event.node_id} changed node {node_id}"
                continue
            assert old.status in LEGAL, f"{node_id} left terminal state {old.status} by {event.type}"
            if event.type is EventType.NODE_RETRY_SCHEDULED:
                assert (old.status, new.status) == (NodeStatus.RUNNING, NodeStatus.RUNNING)
            else:
                assert new.status in LEGAL[old.status], f"{node_id}: {old.status} -> {new.status}"
            if event.type is EventType.NODE_STARTED:
                assert event.attempt == old.attempts + 1, f"{node_id}: {old.attempts} -> {event.attempt}"
                if old.status is NodeStatus.PENDING:
                    verdict = readiness(before, before.workflow.node(node_id))
                    assert verdict is NodeStatus.RUNNING, f"{node_id} started; dependencies say {verdict}"
            if event.type is EventType.NODE_SKIPPED and event.reason == NO_PATH:
                verdict = readiness(before, before.workflow.node(node_id))
                assert verdict is NodeStatus.SKIPPED, f"{node_id} skipped; dependencies say {verdict}"
            assert new.attempts >= old.attempts

    def check_state(self, s: ExecutionState) -> None:
        statuses = {k: v.status for k, v in s.nodes.items()}
        if s.status.terminal:
            assert not any(st_ in OPEN for st_ in statuses.values()), f"{s.status} with open nodes {statuses}"
            assert s.timers == {}
            if s.status is ExecutionStatus.SUCCESS:
                assert set(statuses.values()) <= {NodeStatus.SUCCESS, NodeStatus.SKIPPED}
            return
        if s.status is ExecutionStatus.PENDING:  # between execution_created and execution_started
            assert s.seq == 1
            return
        assert s.status is ExecutionStatus.RUNNING
        assert (s.workflow.timeout_seconds is not None) == ("execution_timeout" in s.timers)
        for node_id, node in s.nodes.items():
            timers = [t for t in s.timers.values() if t.node_id == node_id]
            if node.status is not NodeStatus.RUNNING:
                assert timers == [], f"{node_id} is {node.status} but holds {timers}"
                continue
            assert len(timers) <= 1, f"{node_id} holds several timers {timers}"
            kind = self.config.kind(s.workflow.node(node_id).type)
            if kind.dispatch is not Dispatch.INLINE:
                assert timers, f"running {kind.dispatch} node {node_id} has no timer: it could hang"
            if timers:
                assert timers[0].attempt == node.attempts
                expected = {Dispatch.TIMER: TimerKind.WAIT, Dispatch.TASK: TimerKind.LEASE}.get(kind.dispatch)
                assert timers[0].kind in (expected, TimerKind.RETRY), f"{node_id}: {timers[0]}"


def pick_input(data: st.DataObject, run: Checked, lf: Any) -> Input:
    s = run.state
    assert s is not None
    node_ids = [n.id for n in run.wf.nodes]
    action = data.draw(
        st.sampled_from(["result"] * 6 + ["timer"] * 3 + ["stale_timer", "redeliver", "redeliver", "cancel"]),
        label="action",
    )
    if action == "result":
        running = [k for k, v in s.nodes.items() if v.status is NodeStatus.RUNNING]
        prefer_running = data.draw(st.sampled_from([True, True, True, False]))
        node_id = data.draw(st.sampled_from(running if running and prefer_running else node_ids))
        current = s.nodes[node_id].attempts
        attempt = data.draw(st.sampled_from([current] * 4 + [current - 1, current + 1]))
        if data.draw(st.sampled_from([True, True, False]), label="ok"):
            is_condition = run.wf.node(node_id).type == "condition"
            output = data.draw(st.booleans() if is_condition else st.sampled_from([None, 1, "x", {"k": [1]}]))
            return lf.ok(node_id, attempt, output=output, execution_id="e")
        return lf.fail(
            node_id,
            attempt,
            data.draw(st.sampled_from(["http_5xx", "timeout", "http_4xx"])),
            retryable=data.draw(st.sampled_from([True, True, False])),
            with_error=data.draw(st.sampled_from([True, True, False])),
            execution_id="e",
        )
    if action == "timer" and s.timers:
        return lf.fire(data.draw(st.sampled_from(sorted(s.timers))), execution_id="e")
    if action in ("timer", "stale_timer"):
        kind = data.draw(st.sampled_from(["wait", "lease", "retry"]))
        timer_id = data.draw(
            st.sampled_from(
                [
                    f"{kind}:{data.draw(st.sampled_from(node_ids))}:{data.draw(st.integers(0, 4))}",
                    "execution_timeout",
                    "bogus",
                    "",
                ]
            )
        )
        return lf.fire(timer_id, execution_id="e")
    if action == "redeliver":
        return data.draw(st.sampled_from([inp for inp, _ in run.inputs]))
    return lf.cancel(data.draw(st.none() | st.just("stop")), execution_id="e")


def drain(data: st.DataObject, run: Checked, lf: Any) -> None:
    """Answer every open node (ok results, wait and retry timers) until the run ends."""
    for _ in range(100):
        s = run.state
        assert s is not None
        if s.status.terminal:
            return
        running = [k for k, v in s.nodes.items() if v.status is NodeStatus.RUNNING]
        statuses = {k: v.status for k, v in s.nodes.items()}
        assert running, f"stuck: {s.status} with no running node: {statuses}"
        node_id = running[0]
        timers = [t for t in s.timers.values() if t.node_id == node_id and t.kind is not TimerKind.LEASE]
        run.now += timedelta(seconds=1)
        if timers:
            run.now = max(run.now, timers[0].due_at)  # a timer fires when it is due, not before
            run.feed(lf.fire(timers[0].id, execution_id="e"), run.now)
        else:
            is_condition = run.wf.node(node_id).type == "condition"
            output = data.draw(st.booleans(), label="condition") if is_condition else {"done": node_id}
            result = lf.ok(node_id, s.nodes[node_id].attempts, output=output, execution_id="e")
            events = run.feed(result, run.now)
            assert events, f"the current attempt's result for {node_id} was ignored"
    raise AssertionError("the run did not end after 100 answers")


@PROPERTY_SETTINGS
@given(wf=workflows(), max_lease=st.integers(1, 3), data=st.data())
def test_random_inputs_never_break_the_decider(
    lf: Any, wf: WorkflowDefinition, max_lease: int, data: st.DataObject
) -> None:
    config = DeciderConfig(kinds=lf.config.kinds, lease_grace_seconds=5.0, max_lease_attempts=max_lease)
    run = Checked(wf, config)
    start = StartExecution(execution_id="e", workflow=wf, input={"x": 1}, requested_at=run.now)
    events = run.feed(start, run.now)
    assert [e.type for e in events[:2]] == [EventType.EXECUTION_CREATED, EventType.EXECUTION_STARTED]
    roots = [n.id for n in wf.nodes if not n.depends_on]
    assert [e.node_id for e in events if e.type is EventType.NODE_STARTED] == roots

    for _ in range(data.draw(st.integers(0, 25), label="steps")):
        run.now += timedelta(milliseconds=data.draw(st.integers(0, 60_000)))
        run.feed(pick_input(data, run, lf), run.now)
        assert run.state is not None
        if run.state.status.terminal and data.draw(st.booleans()):
            break

    ended_before_drain = run.state is not None and run.state.status.terminal
    hypothesis.event(f"status before draining: {run.state.status if run.state else None}")
    drain(data, run, lf)
    final = run.state
    assert final is not None
    assert final.status.terminal
    if not ended_before_drain:
        assert final.status is ExecutionStatus.SUCCESS  # nothing but successes while draining

    assert [e.seq for e in run.log] == list(range(1, len(run.log) + 1))
    for kind in (EventType.NODE_RETRY_SCHEDULED, EventType.NODE_SKIPPED, EventType.NODE_FAILED):
        if any(e.type is kind for e in run.log):
            hypothesis.event(f"saw {kind}")
    if any(e.reason == "lease expired; dispatched again" for e in run.log):
        hypothesis.event("saw a lease re-dispatch")
    # consumers rebuild the same state, with or without redelivered events
    folded = None
    for ev in run.log + run.log:
        folded = apply(folded, ev)
    assert folded == final
    # what the orchestrator writes (its events and its state changelog) survives the wire
    wire = codec.default_codec()
    assert [wire.decode(wire.encode(ev), ExecutionEvent) for ev in run.log] == run.log
    assert wire.decode(wire.encode(final), ExecutionState) == final
    # the same inputs in the same order give the same events
    replay = Checked(wf, config)
    for inp, now in run.inputs:
        replay.feed(inp, now)
    assert replay.log == run.log


@PROPERTY_SETTINGS
@given(wf=workflows(), data=st.data())
def test_cancel_at_any_point_ends_the_run_with_no_open_node(
    lf: Any, wf: WorkflowDefinition, data: st.DataObject
) -> None:
    run = Checked(wf, lf.config)
    run.feed(StartExecution(execution_id="e", workflow=wf, input=None, requested_at=run.now), run.now)
    for _ in range(data.draw(st.integers(0, 10))):
        run.now += timedelta(seconds=1)
        run.feed(pick_input(data, run, lf), run.now)
    assert run.state is not None
    was_terminal = run.state.status.terminal
    events = run.feed(lf.cancel(execution_id="e"), run.now)
    if was_terminal:
        assert events == []
    else:
        assert events[-1].type is EventType.EXECUTION_CANCELLED
        assert {e.type for e in events[:-1]} <= {EventType.NODE_CANCELLED}
        assert run.state.status is ExecutionStatus.CANCELLED
