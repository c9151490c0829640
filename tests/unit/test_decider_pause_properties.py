"""Property tests of pause and resume (ADR 0034): random DAGs of every node type, random inputs
with pauses and resumes among them (deadline kept or suspended).

The invariants, checked on every decision:

- ``evolve`` accepts every event, and seqs run 1..n;
- a paused run emits no ``node_started`` and does not end successfully: only resume does that;
- a timer firing while paused changes nothing unless it is the deadline, and the timer stays;
- a resume handles every timer due by then exactly once, in due order, unless the run ends on
  the way; a later firing of a handled timer changes nothing;
- a suspended deadline comes back moved on by exactly the paused time;
- after resuming and answering every open node, the run ends with no open node: pauses never
  lose a node; it succeeds when nothing failed it before;
- the same inputs give the same events, and the final state survives the wire.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime, timedelta
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkflow_stream.core.decider import DeciderConfig, Input, decide
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, StartExecution
from linkflow_stream.core.state import (
    ExecutionState,
    ExecutionStatus,
    NodeStatus,
    Timer,
    TimerKind,
    apply,
    evolve,
)
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.kafka import codec
from tests.unit.test_decider_properties import REGISTRY_CONFIG, on_wire, workflows

DEADLINE = Timer.make_id(TimerKind.EXECUTION_TIMEOUT)
WIRE = codec.default_codec()
ACTIONS = ["result"] * 5 + ["fire"] * 4 + ["pause"] * 3 + ["resume"] * 2 + ["fail", "cancel", "recover"]


def pause(suspend: bool) -> ExecutionCommand:
    return ExecutionCommand(execution_id="e", kind=CommandKind.PAUSE, suspend_deadline=suspend)


RESUME = ExecutionCommand(execution_id="e", kind=CommandKind.RESUME)


def handles(timer: Timer, event: ExecutionEvent) -> bool:
    """Whether ``event`` is what firing ``timer`` does first."""
    if timer.kind is TimerKind.EXECUTION_TIMEOUT:
        return event.type is EventType.EXECUTION_FAILED and event.reason == "execution timed out"
    if event.node_id != timer.node_id:
        return False
    assert timer.attempt is not None
    if timer.kind is TimerKind.WAIT:
        return (event.type, event.attempt) == (EventType.NODE_SUCCEEDED, timer.attempt)
    if timer.kind is TimerKind.THROTTLE:
        return (event.type, event.attempt) == (EventType.NODE_STARTED, timer.attempt)
    if timer.kind is TimerKind.RETRY:
        return (event.type, event.attempt) == (EventType.NODE_STARTED, timer.attempt + 1)
    if timer.kind is TimerKind.CHILD:  # a workflow node's timeout: it fails (or retries) the node
        return event.attempt == timer.attempt and event.type in (
            EventType.NODE_FAILED,
            EventType.NODE_RETRY_SCHEDULED,
        )
    return (event.type, event.attempt) in (
        (EventType.NODE_STARTED, timer.attempt + 1),
        (EventType.NODE_FAILED, timer.attempt),
    )


class PausedRun:
    def __init__(self, wf: WorkflowDefinition, config: DeciderConfig = REGISTRY_CONFIG) -> None:
        self.wf = wf
        self.config = config
        self.state: ExecutionState | None = None
        self.log: list[ExecutionEvent] = []
        self.inputs: list[tuple[Input, datetime]] = []
        self.now = datetime.fromisoformat("2023-11-14T22:13:20+00:00")
        self.failed_by_input = False

    @property
    def s(self) -> ExecutionState:
        assert self.state is not None
        return self.state

    def feed(self, inp: Input, now: datetime) -> list[ExecutionEvent]:
        before = self.state
        events = decide(before, inp, now, self.config)
        state = before
        for ev in events:
            assert ev.seq == (state.seq if state else 0) + 1
            state = evolve(state, ev)
        assert state is not None
        if before is not None and not before.status.terminal:
            self.check(before, state, inp, now, events)
        self.state = state
        self.log.extend(events)
        self.inputs.append((inp, now))
        return events

    def check(
        self,
        before: ExecutionState,
        after: ExecutionState,
        inp: Input,
        now: datetime,
        events: list[ExecutionEvent],
    ) -> None:
        kinds = [e.type for e in events]
        is_resume = isinstance(inp, ExecutionCommand) and inp.kind is CommandKind.RESUME
        if before.status is ExecutionStatus.PAUSED and not is_resume:
            assert EventType.NODE_STARTED not in kinds, f"a paused run started a node on {inp!r}"
            assert EventType.EXECUTION_SUCCEEDED not in kinds, "a paused run ended successfully"
            assert after.status in (ExecutionStatus.PAUSED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)
            if isinstance(inp, ExecutionCommand) and inp.kind is CommandKind.TIMER_FIRED:
                timer = before.timers.get(inp.timer_id or "")
                if timer is not None and timer.kind is not TimerKind.EXECUTION_TIMEOUT:
                    hypothesis.event("a timer fired while paused and was kept")
                    assert events == []
                    assert after.timers.get(timer.id) == timer
        if isinstance(inp, ExecutionCommand) and inp.kind is CommandKind.PAUSE:
            if before.status is ExecutionStatus.RUNNING:
                assert kinds == [EventType.EXECUTION_PAUSED]
                assert after.status is ExecutionStatus.PAUSED
                deadline = before.timers.get(DEADLINE)
                if inp.suspend_deadline and deadline is not None:
                    hypothesis.event("suspended a deadline")
                    assert after.suspended_deadline == deadline.due_at
                    assert DEADLINE not in after.timers
            else:
                assert events == []
        if is_resume:
            if before.status is not ExecutionStatus.PAUSED:
                assert events == []
                return
            self.check_resume(before, after, now, events)

    def check_resume(
        self, before: ExecutionState, after: ExecutionState, now: datetime, events: list[ExecutionEvent]
    ) -> None:
        assert events[0].type is EventType.EXECUTION_RESUMED
        assert before.paused_at is not None
        if before.suspended_deadline is not None:
            assert events[0].due_at == before.suspended_deadline + (now - before.paused_at)
        resumed = evolve(before, events[0])
        due = sorted(
            (t for t in resumed.timers.values() if on_wire(t.due_at) <= on_wire(now)),
            key=lambda t: (on_wire(t.due_at), t.id),
        )
        if due:
            hypothesis.event(f"resume handled {min(len(due), 3)}+ due timers")
        rest = events[1:]
        last_index = -1
        ended_at = next((i for i, e in enumerate(rest) if e.type in _END), len(rest))
        for timer in due:
            matches = [i for i, e in enumerate(rest) if handles(timer, e)]
            if not matches:
                # only a run that ended first (by an earlier due timer) may leave one unhandled
                assert after.status.terminal, f"due timer {timer.id} was not handled on resume"
                continue
            assert len(matches) == 1 or timer.kind is TimerKind.EXECUTION_TIMEOUT, f"{timer.id}: {matches}"
            assert matches[0] >= last_index, "due timers were not handled in due order"
            assert matches[0] <= ended_at
            last_index = matches[0]
            assert after.timers.get(timer.id) != timer, f"{timer.id} still held after it was handled"
            # the timer service's own (late) firing of it is stale now
            late = ExecutionCommand(
                execution_id="e",
                kind=CommandKind.TIMER_FIRED,
                timer_id=timer.id,
                due_at=on_wire(timer.due_at),
            )
            assert decide(after, late, now, self.config) == []


_END = {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}


def pick(data: st.DataObject, run: PausedRun, lf: Any) -> Input:
    s = run.s
    action = data.draw(st.sampled_from(ACTIONS), label="action")
    running = [k for k, v in s.nodes.items() if v.status is NodeStatus.RUNNING]
    if action in ("result", "fail") and running:
        node_id = data.draw(st.sampled_from(running), label="node")
        attempt = s.nodes[node_id].attempts
        if action == "fail":
            retryable = data.draw(st.sampled_from([True, True, True, False]), label="retryable")
            return lf.fail(node_id, attempt, retryable=retryable, execution_id="e")
        output = data.draw(st.booleans()) if run.wf.node(node_id).type == "condition" else {"n": node_id}
        return lf.ok(node_id, attempt, output=output, execution_id="e")
    if action == "fire" and s.timers:
        timer = s.timers[data.draw(st.sampled_from(sorted(s.timers)), label="timer")]
        run.now = max(run.now, on_wire(timer.due_at))
        return lf.fire(timer.id, execution_id="e", due_at=on_wire(timer.due_at))
    if action == "pause":
        return pause(data.draw(st.booleans(), label="suspend"))
    if action == "cancel" and data.draw(st.integers(0, 3)) == 0:
        return lf.cancel(execution_id="e")
    if action == "recover":
        return ExecutionCommand(execution_id="e", kind=CommandKind.RECOVER)
    return RESUME


def drain(data: st.DataObject, run: PausedRun, lf: Any) -> None:
    """Resume, then answer every open node (ok results; wait, retry, throttle timers when due)."""
    for _ in range(100):
        s = run.s
        if s.status.terminal:
            return
        run.now += timedelta(seconds=1)
        if s.status is ExecutionStatus.PAUSED:
            run.feed(RESUME, run.now)
            continue
        running = [k for k, v in s.nodes.items() if v.status is NodeStatus.RUNNING]
        assert running, (
            f"stuck: {s.status} with no running node: { {k: v.status for k, v in s.nodes.items()} }"
        )
        node_id = running[0]
        timers = [t for t in s.timers.values() if t.node_id == node_id and t.kind is not TimerKind.LEASE]
        if timers:
            run.now = max(run.now, on_wire(timers[0].due_at))
            assert run.feed(
                lf.fire(timers[0].id, execution_id="e", due_at=on_wire(timers[0].due_at)), run.now
            )
        else:
            output = data.draw(st.booleans()) if run.wf.node(node_id).type == "condition" else {"n": node_id}
            assert run.feed(
                lf.ok(node_id, s.nodes[node_id].attempts, output=output, execution_id="e"), run.now
            )
    raise AssertionError("the run did not end after 100 answers")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wf=workflows(), max_lease=st.integers(1, 3), data=st.data())
def test_pause_and_resume_never_start_a_node_while_paused_nor_lose_one(
    lf: Any, wf: WorkflowDefinition, max_lease: int, data: st.DataObject
) -> None:
    run = PausedRun(wf, dataclasses.replace(REGISTRY_CONFIG, max_lease_attempts=max_lease))
    run.feed(StartExecution(execution_id="e", workflow=wf, input={"x": 1}, requested_at=run.now), run.now)
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        if run.s.status.terminal:
            break
        run.now += timedelta(milliseconds=data.draw(st.integers(0, 40_000)))
        run.feed(pick(data, run, lf), run.now)
    if not run.s.status.terminal and data.draw(st.booleans(), label="pause at the end"):
        # a pause with every timer firing during it: the drain's resume must handle them all
        run.now += timedelta(seconds=1)
        run.feed(pause(data.draw(st.booleans(), label="suspend")), run.now)
        run.now += timedelta(seconds=data.draw(st.sampled_from([1, 40, 700])))
        for timer in sorted(run.s.timers.values(), key=lambda t: t.due_at):
            if not run.s.status.terminal and on_wire(timer.due_at) <= run.now:
                run.feed(lf.fire(timer.id, execution_id="e", due_at=on_wire(timer.due_at)), run.now)
    ended_before = run.s.status.terminal
    paused_before = run.s.status is ExecutionStatus.PAUSED
    hypothesis.event(f"before draining: {run.s.status}")
    drain(data, run, lf)
    final = run.s
    assert final.status.terminal
    assert not any(n.status in (NodeStatus.PENDING, NodeStatus.RUNNING) for n in final.nodes.values())
    assert final.paused_at is None and final.suspended_deadline is None
    if not ended_before and not any(
        e.type in (EventType.NODE_FAILED, EventType.EXECUTION_FAILED) for e in run.log
    ):
        assert final.status is ExecutionStatus.SUCCESS, "a paused and resumed run lost a node"
        if paused_before:
            hypothesis.event("a run paused at the end succeeded after resume")
    statuses = [t.to_status for t in final.history]
    for earlier, later in itertools.pairwise(statuses):
        if later is ExecutionStatus.PAUSED:
            assert earlier is ExecutionStatus.RUNNING
    assert [e.seq for e in run.log] == list(range(1, len(run.log) + 1))
    folded = None
    for ev in run.log + run.log:
        folded = apply(folded, ev)
    assert folded == final
    assert WIRE.decode(WIRE.encode(final), ExecutionState) == final
    replay = PausedRun(wf, run.config)
    for inp, now in run.inputs:
        replay.feed(inp, now)
    assert replay.log == run.log


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wait_seconds=st.lists(st.sampled_from([0.5, 1, 2, 3.25, 7]), min_size=1, max_size=4),
    pause_at=st.floats(0, 5),
    resume_after=st.floats(0, 10),
)
def test_every_wait_due_while_paused_is_handled_exactly_once_on_resume(
    lf: Any, wait_seconds: list[float], pause_at: float, resume_after: float
) -> None:
    """Parallel waits, a pause, fired timers ignored while paused, a resume: each wait succeeds
    exactly once, at resume if it came due while paused, else when its own firing comes."""
    wf = lf.workflow(*(lf.node(f"w{i}", "wait", config={"seconds": s}) for i, s in enumerate(wait_seconds)))
    run = PausedRun(wf, lf.config)
    t0 = run.now
    run.feed(StartExecution(execution_id="e", workflow=wf, input=None, requested_at=t0), t0)
    paused = on_wire(t0 + timedelta(seconds=pause_at))
    for timer in sorted(run.s.timers.values(), key=lambda t: t.due_at):
        if on_wire(timer.due_at) <= paused:  # fired before the pause
            run.feed(lf.fire(timer.id, execution_id="e", due_at=on_wire(timer.due_at)), on_wire(timer.due_at))
    if run.s.status.terminal:
        return
    run.feed(pause(False), paused)
    resumed = on_wire(paused + timedelta(seconds=resume_after))
    for timer in sorted(run.s.timers.values(), key=lambda t: t.due_at):
        if on_wire(timer.due_at) <= resumed:  # fired while paused: kept
            assert run.feed(lf.fire(timer.id, execution_id="e", due_at=on_wire(timer.due_at)), resumed) == []
    run.feed(RESUME, resumed)
    for timer in sorted(run.s.timers.values(), key=lambda t: t.due_at):
        run.feed(lf.fire(timer.id, execution_id="e", due_at=on_wire(timer.due_at)), on_wire(timer.due_at))
    assert run.s.status is ExecutionStatus.SUCCESS
    succeeded = [e.node_id for e in run.log if e.type is EventType.NODE_SUCCEEDED]
    assert sorted(succeeded) == sorted(f"w{i}" for i in range(len(wait_seconds)))
