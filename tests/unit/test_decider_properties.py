"""Property tests of the decider: random small DAGs, random input sequences, no illegal transition.

Each example builds a workflow of 2 to 7 nodes of every registered type (transform, condition,
wait, http, db, code; random acyclic ``depends_on``, condition branches included; node and
workflow retry policies; with or without a deadline), starts it under the decider config the
node registry gives, feeds a random sequence of inputs, checks every decision, then answers every
open node so the run must end.

The inputs: results ok or failed for random nodes and attempts (current, old and future); firings
of current timers, early or on time, naming their due time, a wrong one or none; stale and
duplicate firings (timers already fired or moved, old attempts, old deadlines, unknown ids);
``set_timeout`` commands that extend or shorten the deadline, some to a time already past;
``recover`` commands; cancels; and redeliveries of earlier inputs.

The invariants, checked on every decision:

- ``evolve`` accepts every decided event (it raises on one that cannot follow its state);
- seqs run 1..n without a gap, and an event's time is its input's time;
- at most one terminal event, the last of its decision and of the log; nothing follows it;
- a terminal run holds no timers and no open node;
- node states move only along legal transitions; a node starts only when its dependencies allow;
- a result for an attempt that is not current (or whose retry is scheduled) changes nothing;
- a failure is retried only when retryable, under its policy's attempts and ``retry_on``, after
  the policy's backoff less its jitter (within bounds, the same for the same execution, node and
  attempt);
- a timer firing counts only for a timer the state holds, once it is due, and, when the firing
  names a due time, only for that due time; what it does then depends on the timer's kind;
- the deadline timer is where the start and the last ``set_timeout`` put it;
- ``decide`` is deterministic: the same input on the same state, or on that state reloaded from
  the codec as the engine reloads it, gives identical events; replaying the inputs gives the
  same log.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.decider import DeciderConfig, Input, decide, decide_evolved
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeResult, Signal, StartExecution
from linkflow_stream.core.state import (
    ExecutionState,
    ExecutionStatus,
    NodeStatus,
    Timer,
    TimerKind,
    apply,
    evolve,
)
from linkflow_stream.core.workflow import Dependency, NodeDefinition, RetryPolicy, WorkflowDefinition
from linkflow_stream.kafka import codec
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.settings import Settings

_SETTINGS = Settings()
REGISTRY_CONFIG = decider_config(build_registry(_SETTINGS), _SETTINGS)
"""What the engine gives the decider: every registered node type with its dispatch and timeout."""

NODE_TYPES = ("transform", "condition", "wait", "http", "db", "code", "workflow", "wait_event")
CONFIGS: dict[str, dict[str, Any]] = {
    "transform": {"expression": "1"},
    "condition": {"expression": "true"},
    "http": {"url": "https://example.com/"},
    "db": {"connection": "main", "query": "select 1"},
    "code": {"source": "result = 1"},
    "workflow": {"workflow_id": "child"},
    "wait_event": {"name": "go", "timeout_seconds": 5},
}
SIGNAL_NAMES = ["go", "go", "other"]
SIGNAL_IDS = ["s1", "s2", "s3"]
WAIT_SECONDS = [0, 1, 2.5, 1.2345]  # 1.2345 s: a due time finer than the wire's milliseconds
LEGAL = {
    NodeStatus.PENDING: {NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED},
    NodeStatus.RUNNING: {NodeStatus.RUNNING, NodeStatus.SUCCESS, NodeStatus.FAILED, NodeStatus.CANCELLED},
}
OPEN = (NodeStatus.PENDING, NodeStatus.RUNNING)
EXECUTION_END = {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
SETTLING = {EventType.NODE_CANCELLED, EventType.NODE_SKIPPED}
"""What ending a run does to its open nodes before the terminal event."""
NO_PATH = "no dependency path was taken"
DEADLINE = Timer.make_id(TimerKind.EXECUTION_TIMEOUT)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WIRE = codec.default_codec()

_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 4),
    initial_delay_seconds=st.sampled_from([0.0, 1.0, 2.5]),
    multiplier=st.sampled_from([1.0, 2.0]),
    max_delay_seconds=st.sampled_from([1.0, 60.0]),
    jitter=st.sampled_from([0.0, 0.0, 0.3, 1.0]),
    retry_on=st.sampled_from([None, None, ("timeout",), ("http_5xx", "timeout")]),
)
retry_policies = st.one_of(st.none(), _policies, _policies)  # two in three nodes retry
workflow_retry_policies = st.none() | _policies  # the default of nodes that set none


def on_wire(at: datetime) -> datetime:
    """``at`` as a Kafka timestamp or an Avro timestamp-millis carries it: whole milliseconds."""
    return from_millis(to_millis(at))


def test_the_properties_cover_every_registered_node_type() -> None:
    assert set(NODE_TYPES) == set(REGISTRY_CONFIG.kinds)
    assert {REGISTRY_CONFIG.kind(t).dispatch for t in ("http", "db", "code")} == {Dispatch.TASK}


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
        config = {"seconds": draw(st.sampled_from(WAIT_SECONDS))} if type_ == "wait" else CONFIGS[type_]
        is_task = REGISTRY_CONFIG.kind(type_).dispatch in (Dispatch.TASK, Dispatch.CHILD)
        nodes.append(
            NodeDefinition(
                id=f"n{i}",
                type=type_,
                depends_on=tuple(depends_on),
                config=config,
                retry=draw(retry_policies) if type_ != "wait" else None,
                timeout_seconds=draw(st.none() | st.sampled_from([1.0, 10.0])) if is_task else None,
            )
        )
    # the order of the node list is not the topological order
    ordered = draw(st.permutations(nodes))
    return WorkflowDefinition(
        id="wf",
        nodes=tuple(ordered),
        created_at=_t0(),
        timeout_seconds=draw(st.none() | st.sampled_from([30.0, 600.0])),
        retry=draw(workflow_retry_policies),
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


def is_command(inp: Input, kind: CommandKind) -> bool:
    return isinstance(inp, ExecutionCommand) and inp.kind is kind


def timer_applies(state: ExecutionState, fired: ExecutionCommand, now: datetime) -> bool:
    """The firing rule, read independently: the state holds the timer, it is due (to the
    millisecond, the wire's precision), and a firing that names a due time names the timer's."""
    timer = state.timers.get(fired.timer_id or "")
    if timer is None:
        return False
    if fired.due_at is not None and on_wire(fired.due_at) != on_wire(timer.due_at):
        return False
    return on_wire(now) >= on_wire(timer.due_at)


class Checked:
    """A run whose every decision is checked against the decider's invariants."""

    def __init__(self, wf: WorkflowDefinition, config: DeciderConfig) -> None:
        self.wf = wf
        self.config = config
        self.state: ExecutionState | None = None
        self.log: list[ExecutionEvent] = []
        self.inputs: list[tuple[Input, datetime]] = []
        self.now = _t0()
        self.deadline: datetime | None = None
        """Where the deadline timer must be: set by the start and by every ``set_timeout``."""
        self.seen_timers: dict[tuple[str, datetime], None] = {}
        """Every (timer id, due time) a state held, in order: the firings a stale owner may send."""

    def feed(self, inp: Input, now: datetime) -> list[ExecutionEvent]:
        before = self.state
        events = decide(before, inp, now, self.config)
        assert decide(before, inp, now, self.config) == events, "decide is not deterministic"
        if before is not None and is_command(inp, CommandKind.TIMER_FIRED):
            # the engine may decide on the state as stored (milliseconds) rather than as computed
            reloaded = WIRE.decode(WIRE.encode(before), ExecutionState)
            assert decide(reloaded, inp, now, self.config) == events, "the reloaded state decides otherwise"
        if before is not None and before.status.terminal:
            assert events == [], f"events after the execution ended: {events}"
        evolved = decide_evolved(before, inp, now, self.config)
        assert [ev for ev, _after in evolved] == events, "decide_evolved decides otherwise"
        state = before
        for i, ev in enumerate(events):
            assert ev.execution_id == inp.execution_id
            assert ev.at == now, "an event's time is the input's time"
            assert ev.seq == (state.seq if state else 0) + 1, "seq must grow by exactly 1"
            if ev.type in EXECUTION_END:
                assert i == len(events) - 1, f"{ev.type} is not the last event of its decision"
            after = evolve(state, ev)  # raises EvolveError on an event that cannot follow
            assert evolved[i][1] == after, "decide_evolved's state is not what evolve gives"
            if state is not None:
                self.check_transition(state, after, ev)
            self.check_state(after)
            state = after
        self.check_decision(before, inp, now, events)
        assert state is not None
        if state.status is ExecutionStatus.RUNNING:
            timer = state.timers.get(DEADLINE)
            due = timer.due_at if timer else None
            assert due == self.deadline, f"the deadline is {due}, not {self.deadline}"
        self.state = state
        self.log.extend(events)
        self.inputs.append((inp, now))
        for timer in state.timers.values():
            self.seen_timers[(timer.id, timer.due_at)] = None
        self.check_reapplied(before, state, inp, now, events)
        return events

    def check_reapplied(
        self,
        before: ExecutionState | None,
        state: ExecutionState,
        inp: Input,
        now: datetime,
        events: list[ExecutionEvent],
    ) -> None:
        """An input the state already reflects changes nothing, now or later; but a recover asks
        for new attempts each time, a repeated set_timeout records the same deadline again, and
        a timer fired early was not applied (it counts once it is due)."""
        if is_command(inp, CommandKind.RECOVER):
            return
        again = decide(state, inp, now, self.config)
        if is_command(inp, CommandKind.SET_TIMEOUT) and again:
            assert [(e.type, e.due_at) for e in again] == [(EventType.EXECUTION_DEADLINE_SET, self.deadline)]
            return
        assert again == [], f"re-applying {inp!r} emitted {again}"
        early_timer = (
            isinstance(inp, ExecutionCommand)
            and before is not None
            and inp.timer_id in before.timers
            and on_wire(now) < on_wire(before.timers[inp.timer_id].due_at)
        )
        if not early_timer and not is_command(inp, CommandKind.SET_TIMEOUT):
            assert decide(state, inp, now + timedelta(seconds=1), self.config) == []

    def check_decision(
        self, before: ExecutionState | None, inp: Input, now: datetime, events: list[ExecutionEvent]
    ) -> None:
        """What the input may cause, judged against an independent reading of the rules."""
        if isinstance(inp, StartExecution) and before is None:
            timeout = inp.workflow.timeout_seconds
            self.deadline = now + timedelta(seconds=timeout) if timeout else None
            assert events[1].type is EventType.EXECUTION_STARTED
            assert events[1].due_at == self.deadline
        if before is None or before.status.terminal:
            return
        if isinstance(inp, StartExecution):
            assert events == [], "a second start emitted events"
            return
        if isinstance(inp, NodeResult):
            if not self.check_result(before, inp, events):
                return
        elif inp.kind is CommandKind.CANCEL:
            assert events[-1].type is EventType.EXECUTION_CANCELLED
            assert {e.type for e in events[:-1]} <= SETTLING
        elif inp.kind is CommandKind.SET_TIMEOUT:
            self.check_set_timeout(before, inp, now, events)
        elif inp.kind is CommandKind.RECOVER:
            self.check_recover(before, events)
        elif inp.kind is CommandKind.SIGNAL:
            self.check_signal(before, inp, events)
        elif not timer_applies(before, inp, now):
            assert events == [], f"firing {inp.timer_id!r} (due {inp.due_at}) at {now} emitted {events}"
            timer = before.timers.get(inp.timer_id or "")
            if timer is not None:
                wrong = inp.due_at is not None and on_wire(inp.due_at) != on_wire(timer.due_at)
                why = "another due time" if wrong else "later"
                hypothesis.event(f"ignored a firing of a current timer for {why}")
            return
        else:
            self.check_timer(before, before.timers[inp.timer_id or ""], events)
        if not any(e.type in EXECUTION_END for e in events):
            # every dependency rule applied: no pending node may be left ready or excluded
            state = before
            for ev in events:
                state = evolve(state, ev)
            for node in state.workflow.nodes:
                if state.nodes[node.id].status is NodeStatus.PENDING:
                    assert readiness(state, node) is None, f"{node.id} left pending though it is decided"

    def check_result(self, before: ExecutionState, inp: NodeResult, events: list[ExecutionEvent]) -> bool:
        """A result counts only for the current attempt of a running node with no retry scheduled."""
        node = before.nodes.get(inp.node_id)
        retrying = any(t.kind is TimerKind.RETRY and t.node_id == inp.node_id for t in before.timers.values())
        current = node is not None and node.status is NodeStatus.RUNNING and node.attempts == inp.attempt
        if not current or retrying:
            assert events == [], f"a result that matches no current attempt emitted {events}"
            return False
        assert events, "the current attempt's result was ignored"
        first = events[0]
        assert (first.node_id, first.attempt) == (inp.node_id, inp.attempt)
        if inp.ok:
            assert first.type is EventType.NODE_SUCCEEDED
            assert first.output == inp.output
            return True
        definition = before.workflow.node(inp.node_id)
        policy = definition.retry or before.workflow.retry  # the node's own policy wins
        retry = (
            inp.error is not None
            and inp.error.retryable
            and policy is not None
            and inp.attempt < policy.max_attempts
            and (policy.retry_on is None or inp.error.error_class in policy.retry_on)
        )
        assert first.type is (EventType.NODE_RETRY_SCHEDULED if retry else EventType.NODE_FAILED)
        if retry:
            assert policy is not None
            assert len(events) == 1
            # jitter: derived from execution, node and attempt; it only takes off, at most jitter x delay
            delay = policy.retry_delay(inp.attempt, inp.execution_id, inp.node_id)
            assert first.due_at == events[0].at + timedelta(seconds=delay)
            backoff = policy.delay(inp.attempt)
            assert backoff * (1 - policy.jitter) - 1e-9 <= delay <= backoff
            if policy.jitter:
                hypothesis.event("a jittered retry")
        else:
            assert events[-1].type is EventType.EXECUTION_FAILED
            assert {e.type for e in events[1:-1]} <= SETTLING
        return True

    def check_set_timeout(
        self, before: ExecutionState, inp: ExecutionCommand, now: datetime, events: list[ExecutionEvent]
    ) -> None:
        """The deadline moves to start + timeout; one already past ends the run at once."""
        if inp.timeout_seconds is None:
            assert events == [], "a set_timeout without a timeout emitted events"
            return
        assert before.started_at is not None
        deadline = before.started_at + timedelta(seconds=inp.timeout_seconds)
        assert (events[0].type, events[0].due_at) == (EventType.EXECUTION_DEADLINE_SET, deadline)
        self.deadline = deadline
        if deadline <= now:
            hypothesis.event("set_timeout to a deadline already past")
            assert events[-1].type is EventType.EXECUTION_FAILED
            assert "timed out" in (events[-1].reason or "")
            assert {e.type for e in events[1:-1]} <= SETTLING
        else:
            old = before.timers.get(DEADLINE)
            if old is not None:
                moved = "extends" if deadline > old.due_at else "shortens"
                hypothesis.event(f"set_timeout {moved} a deadline")
            assert len(events) == 1

    def check_recover(self, before: ExecutionState, events: list[ExecutionEvent]) -> None:
        """Every task in flight (a lease running) is dispatched again as its next attempt; nothing
        else happens, since the state before was already settled."""
        in_flight = {t.node_id: t.attempt for t in before.timers.values() if t.kind is TimerKind.LEASE}
        assert all(e.type is EventType.NODE_STARTED for e in events), events
        assert all(e.reason == "recovered by request" for e in events), events
        assert {e.node_id: e.attempt for e in events} == {
            node_id: attempt + 1 for node_id, attempt in in_flight.items() if attempt is not None
        }
        assert len(events) == len(in_flight)
        if in_flight:
            hypothesis.event("recover dispatched tasks again")

    def check_signal(
        self, before: ExecutionState, inp: ExecutionCommand, events: list[ExecutionEvent]
    ) -> None:
        """A signal id counts once; a new one is kept, and taken at once by a node waiting on it."""
        assert inp.signal is not None
        if inp.signal.id in before.signal_ids:
            assert events == [], f"a duplicate signal emitted {events}"
            hypothesis.event("ignored a duplicate signal")
            return
        assert events[0].type is EventType.SIGNAL_RECEIVED
        assert events[0].signal is not None
        assert events[0].signal.id == inp.signal.id
        if any(e.signal is not None for e in events[1:]):
            hypothesis.event("a signal reached a waiting node")

    def check_timer(self, before: ExecutionState, timer: Timer, events: list[ExecutionEvent]) -> None:
        """A due firing of a current timer always does what its kind says."""
        assert events, f"timer {timer.id!r} fired when due and changed nothing"
        hypothesis.event(f"{timer.kind} timer applied")
        if timer.kind is TimerKind.EXECUTION_TIMEOUT:
            assert events[-1].type is EventType.EXECUTION_FAILED
            assert events[-1].reason == "execution timed out"
            assert {e.type for e in events[:-1]} <= SETTLING
            return
        assert timer.node_id is not None
        assert timer.attempt is not None
        first = events[0]
        assert first.node_id == timer.node_id
        if timer.kind is TimerKind.WAIT:
            assert (first.type, first.attempt) == (EventType.NODE_SUCCEEDED, timer.attempt)
            return
        if timer.kind is TimerKind.RETRY:
            assert (first.type, first.attempt) == (EventType.NODE_STARTED, timer.attempt + 1)
            if before.workflow.node(timer.node_id).type != "wait_event":
                assert len(events) == 1  # a wait_event node may take a kept signal at once
            return
        if timer.kind is TimerKind.SIGNAL_TIMEOUT:
            # the timeout fires only for a node that no kept signal could satisfy
            name = before.workflow.node(timer.node_id).config["name"]
            assert not any(s.name == name for s in before.signals), "a kept signal was not delivered"
            assert first.type in (EventType.NODE_RETRY_SCHEDULED, EventType.NODE_FAILED)
            assert first.error is not None
            assert first.error.error_class == "timeout"
            return
        if timer.kind is TimerKind.CHILD:
            # a child run that outlived its node's timeout: the node fails with class timeout
            # (retryable: a new attempt starts a new child); never a re-dispatch of the same one
            definition = before.workflow.node(timer.node_id)
            policy = definition.retry or before.workflow.retry
            retry = policy is not None and timer.attempt < policy.max_attempts
            assert first.error is not None
            assert first.error.error_class == "timeout"
            assert first.type is (EventType.NODE_RETRY_SCHEDULED if retry else EventType.NODE_FAILED)
            if not retry:
                assert events[-1].type is EventType.EXECUTION_FAILED
            return
        definition = before.workflow.node(timer.node_id)
        policy = definition.retry or before.workflow.retry
        budget = self.config.max_lease_attempts + (policy.max_attempts - 1 if policy else 0)
        if timer.attempt >= budget:
            assert first.type is EventType.NODE_FAILED
            assert first.error is not None
            assert first.error.error_class == "lease_expired"
            assert events[-1].type is EventType.EXECUTION_FAILED
        else:
            assert [(e.type, e.attempt, e.reason) for e in events] == [
                (EventType.NODE_STARTED, timer.attempt + 1, "lease expired; dispatched again")
            ]

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
            assert s.timers == {}, f"{s.status} run holds timers {s.timers}"
            if s.status is ExecutionStatus.SUCCESS:
                assert set(statuses.values()) <= {NodeStatus.SUCCESS, NodeStatus.SKIPPED}
            return
        if s.status is ExecutionStatus.PENDING:  # between execution_created and execution_started
            assert s.seq == 1
            return
        assert s.status is ExecutionStatus.RUNNING
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
                expected = {
                    Dispatch.TIMER: TimerKind.WAIT,
                    Dispatch.TASK: TimerKind.LEASE,
                    Dispatch.CHILD: TimerKind.CHILD,
                    Dispatch.SIGNAL: TimerKind.SIGNAL_TIMEOUT,
                }.get(kind.dispatch)
                assert timers[0].kind in (expected, TimerKind.RETRY), f"{node_id}: {timers[0]}"

    def check_log(self) -> None:
        """The whole history: seqs 1..n, and at most one terminal event, the last one."""
        assert [e.seq for e in self.log] == list(range(1, len(self.log) + 1))
        ends = [i for i, e in enumerate(self.log) if e.type in EXECUTION_END]
        assert ends in ([], [len(self.log) - 1]), f"terminal events at {ends} of {len(self.log)}"
        # every signal is received once and consumed at most once, after it was received
        received = [e.signal.id for e in self.log if e.type is EventType.SIGNAL_RECEIVED and e.signal]
        consumed = [e.signal.id for e in self.log if e.type is EventType.NODE_SUCCEEDED and e.signal]
        assert len(received) == len(set(received)), f"a signal id was received twice: {received}"
        assert len(consumed) == len(set(consumed)), f"a signal was consumed twice: {consumed}"
        for e in self.log:
            if e.type is EventType.NODE_SUCCEEDED and e.signal is not None:
                first = next(
                    x
                    for x in self.log
                    if x.type is EventType.SIGNAL_RECEIVED and x.signal and x.signal.id == e.signal.id
                )
                assert first.seq < e.seq
                assert self.wf.node(e.node_id or "").config["name"] == e.signal.name


ACTIONS = (
    ["result"] * 6
    + ["timer"] * 3
    + ["stale_timer"] * 2
    + ["set_timeout", "recover", "redeliver", "redeliver", "cancel"]
    + ["signal"] * 3
)


def pick_input(data: st.DataObject, run: Checked, lf: Any) -> Input:
    """One input for the run's current state; it may move the run's clock forward to a due time."""
    s = run.state
    assert s is not None
    node_ids = [n.id for n in run.wf.nodes]
    action = data.draw(st.sampled_from(ACTIONS), label="action")
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
        timer = s.timers[data.draw(st.sampled_from(sorted(s.timers)), label="timer")]
        return fire(data, run, lf, timer.id, timer.due_at, wrong=True)
    if action in ("timer", "stale_timer") and run.seen_timers and data.draw(st.booleans()):
        # a timer some state held: fired or moved since, or still current (a duplicate firing)
        timer_id, due = data.draw(st.sampled_from(list(run.seen_timers)), label="seen timer")
        return fire(data, run, lf, timer_id, due, wrong=False)
    if action in ("timer", "stale_timer"):
        kind = data.draw(st.sampled_from(["wait", "lease", "retry", "child"]))
        node_id = data.draw(st.sampled_from(node_ids))
        timer_id = data.draw(
            st.sampled_from([f"{kind}:{node_id}:{data.draw(st.integers(0, 4))}", DEADLINE, "bogus", ""])
        )
        return lf.fire(timer_id, execution_id="e")
    if action == "set_timeout":
        return ExecutionCommand(
            execution_id="e", kind=CommandKind.SET_TIMEOUT, timeout_seconds=pick_timeout(data, run)
        )
    if action == "recover":
        return ExecutionCommand(execution_id="e", kind=CommandKind.RECOVER)
    if action == "signal":
        return signal(data.draw(st.sampled_from(SIGNAL_NAMES)), data.draw(st.sampled_from(SIGNAL_IDS)), data)
    if action == "redeliver":
        return data.draw(st.sampled_from([inp for inp, _ in run.inputs]))
    return lf.cancel(data.draw(st.none() | st.just("stop")), execution_id="e")


def signal(name: str, signal_id: str, data: st.DataObject) -> ExecutionCommand:
    payload = data.draw(st.sampled_from([None, 1, {"k": [1]}]), label="payload")
    return ExecutionCommand(
        execution_id="e", kind=CommandKind.SIGNAL, signal=Signal(name=name, id=signal_id, payload=payload)
    )


def fire(data: st.DataObject, run: Checked, lf: Any, timer_id: str, due: datetime, *, wrong: bool) -> Input:
    """A firing of ``timer_id`` (due at ``due``): early, on time or late, naming its due time (as
    the timer service does), none (as older producers do) or, with ``wrong``, another one."""
    when = data.draw(st.sampled_from(["now", "due", "due", "late"]), label="when")
    if when != "now":
        late = timedelta(milliseconds=data.draw(st.integers(1, 5_000)) if when == "late" else 0)
        run.now = max(run.now, on_wire(due) + late)
    names = [None, on_wire(due), on_wire(due), due]
    if wrong:
        names += [on_wire(due) + timedelta(milliseconds=d) for d in (-1, 1, -1000, 1000)]
    return lf.fire(timer_id, execution_id="e", due_at=data.draw(st.sampled_from(names), label="due_at"))


def pick_timeout(data: st.DataObject, run: Checked) -> float:
    """A timeout that extends or shortens the deadline, puts it exactly now, or in the past."""
    assert run.state is not None
    assert run.state.started_at is not None
    elapsed = (run.now - run.state.started_at).total_seconds()
    return data.draw(
        st.sampled_from(
            [
                0.001,
                max(0.001, elapsed - 5),  # already past
                max(0.001, elapsed),  # due right now: also past
                elapsed + 0.001,
                elapsed + 2,
                elapsed + 30,
                3600.0,
            ]
        ),
        label="timeout",
    )


def drain(data: st.DataObject, run: Checked, lf: Any) -> None:
    """Answer every open node (ok results, wait and retry timers when due) until the run ends."""
    for _ in range(100):
        s = run.state
        assert s is not None
        if s.status.terminal:
            return
        running = [k for k, v in s.nodes.items() if v.status is NodeStatus.RUNNING]
        statuses = {k: v.status for k, v in s.nodes.items()}
        assert running, f"stuck: {s.status} with no running node: {statuses}"
        node_id = running[0]
        timers = [
            t
            for t in s.timers.values()
            if t.node_id == node_id and t.kind not in (TimerKind.LEASE, TimerKind.CHILD)
        ]
        run.now += timedelta(seconds=1)
        if any(t.kind is TimerKind.SIGNAL_TIMEOUT for t in timers):
            name = run.wf.node(node_id).config["name"]
            events = run.feed(signal(name, f"drain-{s.seq}", data), run.now)
            assert events[-1].type is not EventType.SIGNAL_RECEIVED, "a waiting node did not take its signal"
        elif timers:
            due = on_wire(timers[0].due_at)  # what the timer service names
            run.now = max(run.now, due)  # a timer fires when it is due
            events = run.feed(lf.fire(timers[0].id, execution_id="e", due_at=due), run.now)
            assert events, f"the due timer {timers[0]} was ignored"
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
    config = dataclasses.replace(REGISTRY_CONFIG, max_lease_attempts=max_lease)
    run = Checked(wf, config)
    start = StartExecution(execution_id="e", workflow=wf, input={"x": 1}, requested_at=run.now)
    events = run.feed(start, run.now)
    assert [e.type for e in events[:2]] == [EventType.EXECUTION_CREATED, EventType.EXECUTION_STARTED]
    roots = [n.id for n in wf.nodes if not n.depends_on]
    assert [e.node_id for e in events if e.type is EventType.NODE_STARTED] == roots

    for _ in range(data.draw(st.integers(0, 25), label="steps")):
        run.now += timedelta(milliseconds=data.draw(st.integers(0, 60_000)))
        inp = pick_input(data, run, lf)  # it may move the clock to a due time
        run.feed(inp, run.now)
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

    run.check_log()
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
    # what the orchestrator writes (its events and its state changelog) survives the wire, to the
    # millisecond: a due time computed from a wait of 1.2345 s loses its microseconds there
    assert [WIRE.decode(WIRE.encode(ev), ExecutionEvent) for ev in run.log] == [
        ev.model_copy(update={"due_at": on_wire(ev.due_at)}) if ev.due_at else ev for ev in run.log
    ]
    assert WIRE.decode(WIRE.encode(final), ExecutionState) == final
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
    run = Checked(wf, REGISTRY_CONFIG)
    run.feed(StartExecution(execution_id="e", workflow=wf, input=None, requested_at=run.now), run.now)
    for _ in range(data.draw(st.integers(0, 10))):
        run.now += timedelta(seconds=1)
        inp = pick_input(data, run, lf)  # it may move the clock to a due time
        run.feed(inp, run.now)
    assert run.state is not None
    was_terminal = run.state.status.terminal
    events = run.feed(lf.cancel(execution_id="e"), run.now)
    if was_terminal:
        assert events == []
    else:
        assert events[-1].type is EventType.EXECUTION_CANCELLED
        assert {e.type for e in events[:-1]} <= {EventType.NODE_CANCELLED}
        assert run.state.status is ExecutionStatus.CANCELLED
    run.check_log()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    timeout=st.none() | st.sampled_from([10.0, 60.0]),
    data=st.data(),
)
def test_only_a_due_firing_of_the_current_deadline_ends_the_run(
    lf: Any, timeout: float | None, data: st.DataObject
) -> None:
    """A deadline moved back and forth by set_timeout, and firings for any deadline it ever had:
    the run ends only by a firing for the current deadline once due, or by a deadline set in the
    past; the checks of every decision (``Checked``) say which."""
    wf = lf.workflow(lf.node("h", "http", timeout_seconds=3600), timeout_seconds=timeout)
    run = Checked(wf, REGISTRY_CONFIG)
    run.feed(StartExecution(execution_id="e", workflow=wf, input=None, requested_at=run.now), run.now)
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        assert run.state is not None
        if run.state.status.terminal:
            break
        run.now += timedelta(milliseconds=data.draw(st.integers(0, 20_000)))
        deadlines = [due for timer_id, due in run.seen_timers if timer_id == DEADLINE]
        if deadlines and data.draw(st.booleans(), label="fire"):
            inp = fire(data, run, lf, DEADLINE, data.draw(st.sampled_from(deadlines)), wrong=True)
        else:
            inp = ExecutionCommand(
                execution_id="e", kind=CommandKind.SET_TIMEOUT, timeout_seconds=pick_timeout(data, run)
            )
        run.feed(inp, run.now)
    assert run.state is not None
    assert run.state.status in (ExecutionStatus.RUNNING, ExecutionStatus.FAILED)
    run.check_log()
