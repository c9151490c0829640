"""The decider: what happens next in an execution, as events. Pure and deterministic.

``decide(state, input, now)`` reads the state and one input (a start request, a node result or
a command) and returns the events that follow. Time is ``now``, the input record's timestamp,
never the clock, so re-processing an input after a crash yields the same events with the same
sequence numbers, and consumers drop them as duplicates. An input that was already applied, or
that no longer matches the state (a result for an old attempt, a stale timer), yields nothing.
A timer firing counts only at or after its timer's due time, and only for that due time when the
firing names one: a deadline keeps its timer id when it moves, so the id alone cannot tell a
firing for the old deadline from one for the new.

A paused run (ADR 0034) starts nothing: no node, no re-dispatch for a lease, no retry. Results
of nodes in flight are still recorded (and a failure that cannot be retried still fails the
run), and its timers stay in the state with their due times: one that fires while paused is
kept, and resuming handles every timer due by then, in due order, before the run advances. A
run whose last node finishes while paused stays paused and ends when resumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from linkflow_stream.core.clock import to_millis
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.messages import (
    CommandKind,
    ExecutionCommand,
    NodeError,
    NodeResult,
    Signal,
    StartExecution,
)
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.signals import correlation_key
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeStatus, Timer, TimerKind, evolve
from linkflow_stream.core.workflow import Dependency, NodeDefinition, RetryPolicy

Input = StartExecution | NodeResult | ExecutionCommand


@dataclass(frozen=True)
class NodeKind:
    """What the decider must know of a node type: where it runs and its default timeout."""

    dispatch: Dispatch
    default_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class DeciderConfig:
    kinds: Mapping[str, NodeKind] = field(default_factory=dict)
    lease_grace_seconds: float = 5.0
    max_lease_attempts: int = 5
    """Dispatches without an answer after which a node fails with ``lease_expired``; a node's
    retry policy adds its own attempts on top."""
    gate_all: bool = False
    """Every run waits for the gate's admission, not only runs of workflows with a concurrency
    limit: set when a per-team cap on running runs is configured (ADR 0030)."""

    def gated(self, inp: StartExecution) -> bool:
        """Whether a new run waits ``queued`` for the gate's ``admit`` before it starts."""
        return self.gate_all or inp.workflow.concurrency is not None

    def kind(self, node_type: str) -> NodeKind:
        return self.kinds.get(node_type, NodeKind(Dispatch.TASK))


class _Builder:
    """Accumulates events, folding each into the state so later decisions see earlier ones."""

    def __init__(self, state: ExecutionState | None, execution_id: str, now: datetime) -> None:
        self.state = state
        self.execution_id = execution_id
        self.now = now
        self.events: list[ExecutionEvent] = []
        self.states: list[ExecutionState] = []
        """The state after each event, in order: what ``evolve`` gave, kept for ``decide_evolved``."""

    @property
    def s(self) -> ExecutionState:
        assert self.state is not None
        return self.state

    def emit(self, type_: EventType, **fields: Any) -> None:
        seq = (self.state.seq if self.state else 0) + 1
        event = ExecutionEvent(execution_id=self.execution_id, seq=seq, type=type_, at=self.now, **fields)
        self.state = evolve(self.state, event)
        self.events.append(event)
        self.states.append(self.state)


def decide(
    state: ExecutionState | None, inp: Input, now: datetime, config: DeciderConfig | None = None
) -> list[ExecutionEvent]:
    """The events that follow ``inp`` in ``state``; empty when ``inp`` changes nothing."""
    return _decided(state, inp, now, config).events


def decide_evolved(
    state: ExecutionState | None, inp: Input, now: datetime, config: DeciderConfig | None = None
) -> list[tuple[ExecutionEvent, ExecutionState]]:
    """``decide``, each event with the state after it (``evolve`` of the one before and the event).

    The decider folds every event it emits into the state anyway, to decide the next one; the
    orchestrator's step needs the state between events too (an inline node runs on the state its
    ``node_started`` left), and folding them again cost a quarter of a five-node run's step."""
    b = _decided(state, inp, now, config)
    return list(zip(b.events, b.states, strict=True))


def _decided(
    state: ExecutionState | None, inp: Input, now: datetime, config: DeciderConfig | None
) -> _Builder:
    cfg = config or DeciderConfig()
    b = _Builder(state, inp.execution_id, now)
    if isinstance(inp, StartExecution):
        if state is not None:
            return b
        b.emit(
            EventType.EXECUTION_CREATED,
            workflow=inp.workflow,
            input=inp.input,
            priority=inp.priority,
            traceparent=inp.traceparent,
            links=inp.links or None,
        )
        if cfg.gated(inp):
            b.emit(EventType.EXECUTION_QUEUED, reason="waiting for a concurrency slot")
            _reuse(b, inp)  # a rerun's reused nodes succeed now; nothing is dispatched until admitted
            return b
        _start(b, cfg, inp)
        return b
    if state is None or state.status.terminal:
        return b
    if state.status is ExecutionStatus.QUEUED and not isinstance(inp, NodeResult):
        if inp.kind is CommandKind.ADMIT:
            _start(b, cfg)
            return b
        if inp.kind in (CommandKind.RECOVER, CommandKind.PAUSE, CommandKind.RESUME):
            return b  # nothing in flight to dispatch again or hold; the gate admits it in its turn
    if isinstance(inp, NodeResult):
        _on_result(b, inp, cfg)
    elif inp.kind is CommandKind.CANCEL:
        _terminate(b, ExecutionStatus.CANCELLED, inp.reason or "cancelled by request")
    elif inp.kind is CommandKind.SET_TIMEOUT and inp.timeout_seconds is not None:
        _set_deadline(b, inp.timeout_seconds)
    elif inp.kind is CommandKind.PAUSE:
        _pause(b, inp)
    elif inp.kind is CommandKind.RESUME:
        _resume(b, cfg)
    elif state.status is ExecutionStatus.PAUSED and not _fires_while_paused(state, inp):
        pass  # a re-dispatch, or a timer kept for resume
    elif inp.kind is CommandKind.RECOVER:
        _recover(b, cfg)
    elif inp.kind is CommandKind.TIMER_FIRED and inp.timer_id is not None:
        _on_timer(b, inp, cfg)
    elif inp.kind is CommandKind.SIGNAL and inp.signal is not None and inp.signal.id is not None:
        _on_signal(b, inp.signal)
    _deliver_signals(b, cfg)
    return b


def _start(b: _Builder, cfg: DeciderConfig, start: StartExecution | None = None) -> None:
    """The run starts: its deadline counts from now (for a queued run, its admission), unless one
    was set while it was queued (``set_timeout``), which stays. ``start``: a run started at once,
    whose rerun reuses nodes now (a queued run reused them when it was created)."""
    timeout = b.s.workflow.timeout_seconds
    if Timer.make_id(TimerKind.EXECUTION_TIMEOUT) in b.s.timers:
        timeout = None
    b.emit(EventType.EXECUTION_STARTED, due_at=b.now + timedelta(seconds=timeout) if timeout else None)
    if start is not None:
        _reuse(b, start)
    _advance(b, cfg)


def _reuse(b: _Builder, start: StartExecution) -> None:
    """A rerun: the nodes it takes from the run it reruns succeed at once with their outputs
    there, before anything is dispatched, so they never run here."""
    reused = start.reused or {}
    source = start.links.get("rerun_of", "the run this one reruns")
    for node in b.s.workflow.nodes:
        if node.id in reused:
            b.emit(
                EventType.NODE_REUSED, node_id=node.id, output=reused[node.id], reason=f"reused from {source}"
            )


def _on_signal(b: _Builder, signal: Signal) -> None:
    """Keep a signal the run has not seen (by id); ``_deliver_signals`` hands it to a waiting node."""
    if signal.id in b.s.signal_ids:
        return  # a duplicate: a client's retry, or a record read again
    b.emit(EventType.SIGNAL_RECEIVED, signal=signal.model_copy(update={"execution_id": b.execution_id}))


def _deliver_signals(b: _Builder, cfg: DeciderConfig) -> None:
    """Each waiting ``wait_event`` node takes the oldest kept signal of its name (nodes in
    workflow order), succeeds with its payload, and what follows starts; until none matches."""
    while b.state is not None and not b.s.status.terminal:
        match = _next_delivery(b, cfg)
        if match is None:
            return
        node, signal = match
        b.emit(
            EventType.NODE_SUCCEEDED,
            node_id=node.id,
            attempt=b.s.nodes[node.id].attempts,
            output=signal.payload,
            signal=Signal(name=signal.name, id=signal.id),
        )
        _advance(b, cfg)


def _next_delivery(b: _Builder, cfg: DeciderConfig) -> tuple[NodeDefinition, Signal] | None:
    if not b.s.signals:
        return None
    for node in b.s.workflow.nodes:
        if cfg.kind(node.type).dispatch is not Dispatch.SIGNAL:
            continue
        ns = b.s.nodes[node.id]
        waiting = Timer.make_id(TimerKind.SIGNAL_TIMEOUT, node.id, ns.attempts) in b.s.timers
        if ns.status is not NodeStatus.RUNNING or not waiting:
            continue  # not started, done, or parked for its retry (it takes the signal then)
        name = node.config.get("name")
        for signal in b.s.signals:
            if signal.name == name:
                return node, signal
    return None


def _set_deadline(b: _Builder, timeout_seconds: float) -> None:
    """The run's deadline becomes start + ``timeout_seconds``; one already past ends it now."""
    start = b.s.started_at or b.s.created_at
    deadline = start + timedelta(seconds=timeout_seconds)
    b.emit(EventType.EXECUTION_DEADLINE_SET, due_at=deadline, reason=f"timeout set to {timeout_seconds:g}s")
    if deadline <= b.now and b.s.suspended_deadline is None:
        _terminate(b, ExecutionStatus.FAILED, f"execution timed out (timeout set to {timeout_seconds:g}s)")


def _pause(b: _Builder, cmd: ExecutionCommand) -> None:
    """A running run stops dispatching; with ``suspend_deadline`` its deadline stops too."""
    if b.s.status is not ExecutionStatus.RUNNING:
        return  # already paused (a repeated command): nothing to do
    deadline = b.s.timers.get(Timer.make_id(TimerKind.EXECUTION_TIMEOUT))
    suspended = deadline.due_at if cmd.suspend_deadline and deadline is not None else None
    b.emit(EventType.EXECUTION_PAUSED, due_at=suspended, reason=cmd.reason or "paused by request")


def _fires_while_paused(state: ExecutionState, inp: ExecutionCommand) -> bool:
    """Of the commands that may start nodes, only the deadline acts on a paused run."""
    if inp.kind is CommandKind.RECOVER:
        return False
    if inp.kind is CommandKind.TIMER_FIRED:
        timer = state.timers.get(inp.timer_id or "")
        return timer is not None and timer.kind is TimerKind.EXECUTION_TIMEOUT
    return True


def _resume(b: _Builder, cfg: DeciderConfig) -> None:
    """Dispatch again: set a suspended deadline again (moved on by the paused time), handle every
    timer that came due while paused as if it fired then, in due order, then advance."""
    if b.s.status is not ExecutionStatus.PAUSED:
        return  # not paused (a repeated command): nothing to do
    paused_at = b.s.paused_at or b.now
    suspended = b.s.suspended_deadline
    deadline = suspended + (b.now - paused_at) if suspended is not None else None
    b.emit(EventType.EXECUTION_RESUMED, due_at=deadline, reason="resumed by request")
    now_ms = to_millis(b.now)
    due = sorted(
        (t for t in b.s.timers.values() if to_millis(t.due_at) <= now_ms),
        key=lambda t: (to_millis(t.due_at), t.id),
    )
    for timer in due:
        if b.s.status.terminal:
            return
        if b.s.timers.get(timer.id) == timer:  # not moved on by an earlier one
            fired = ExecutionCommand(
                execution_id=b.execution_id,
                kind=CommandKind.TIMER_FIRED,
                timer_id=timer.id,
                due_at=timer.due_at,
            )
            _on_timer(b, fired, cfg)
    if not b.s.status.terminal:
        _advance(b, cfg)


def _recover(b: _Builder, cfg: DeciderConfig) -> None:
    """Do now what leases would do later: dispatch every task in flight again as a new attempt,
    then start whatever is ready. For a run stuck on a lost task or result."""
    for timer in list(b.s.timers.values()):
        if timer.kind is TimerKind.LEASE and timer.node_id is not None and timer.attempt is not None:
            _start_node(
                b, b.s.workflow.node(timer.node_id), timer.attempt + 1, cfg, reason="recovered by request"
            )
    _advance(b, cfg)


def _on_result(b: _Builder, r: NodeResult, cfg: DeciderConfig) -> None:
    node = b.s.nodes.get(r.node_id)
    if node is None or node.status is not NodeStatus.RUNNING or node.attempts != r.attempt:
        return  # an old attempt, a duplicate, or a node that was cancelled meanwhile
    if any(t.kind in _PARKED and t.node_id == r.node_id for t in b.s.timers.values()):
        return  # this attempt already failed (its retry is scheduled) or waits for a token
    if r.throttled_until is not None and not r.ok:
        if _answers_current_dispatch(b, r):
            _throttle(b, r)
        return
    if r.ok:
        b.emit(
            EventType.NODE_SUCCEEDED,
            node_id=r.node_id,
            attempt=r.attempt,
            output=r.output,
            usage=r.usage,
            logs=r.logs,
        )
        _advance(b, cfg)
    else:
        error = r.error or NodeError(error_class="unknown", message="node failed without an error")
        _fail_node(b, b.s.workflow.node(r.node_id), r.attempt, error, cfg, r.usage, r.logs)


_PARKED = frozenset({TimerKind.RETRY, TimerKind.THROTTLE})
"""Timers of a node whose attempt is not out on an executor: a result for it is a late copy."""


def _answers_current_dispatch(b: _Builder, r: NodeResult) -> bool:
    """Whether a throttled result answers the dispatch now out, not an earlier one of the same
    attempt number (a throttled attempt goes out again under its number; a redelivered copy of the
    earlier task may come back throttled after that). Told by the task's lease: each dispatch has
    its own. A result that does not say (older executors) is taken as current."""
    if r.lease_until is None:
        return True
    lease = b.s.timers.get(Timer.make_id(TimerKind.LEASE, r.node_id, r.attempt))
    return lease is not None and to_millis(lease.due_at) == to_millis(r.lease_until)


def _throttle(b: _Builder, r: NodeResult) -> None:
    """The attempt did not run for want of a token: wait (a durable timer) and dispatch the same
    attempt again then. Not a failure, so the retry policy's attempts are untouched."""
    assert r.throttled_until is not None
    due = max(r.throttled_until, b.now)
    b.emit(
        EventType.NODE_THROTTLED,
        node_id=r.node_id,
        attempt=r.attempt,
        due_at=due,
        reason=r.error.message if r.error else "rate limit: no token",
    )


def _on_timer(b: _Builder, fired: ExecutionCommand, cfg: DeciderConfig) -> None:
    timer = b.s.timers.get(fired.timer_id or "")
    if timer is None:
        return  # already fired, or its node moved on
    # Compared in whole milliseconds, the precision of the wire: a due time computed in memory
    # may carry microseconds that the timer service's copy (and the record's timestamp) lost.
    due = to_millis(timer.due_at)
    if fired.due_at is not None and to_millis(fired.due_at) != due:
        return  # a firing for another due time of this id: the deadline moved since
    if to_millis(b.now) < due:
        return  # early (a clock ahead, or a firing for a deadline since extended); it fires again
    if timer.kind is TimerKind.EXECUTION_TIMEOUT:
        _terminate(b, ExecutionStatus.FAILED, "execution timed out")
        return
    assert timer.node_id is not None
    assert timer.attempt is not None
    node = b.s.workflow.node(timer.node_id)
    if timer.kind is TimerKind.WAIT:
        b.emit(
            EventType.NODE_SUCCEEDED,
            node_id=node.id,
            attempt=timer.attempt,
            output={"waited_seconds": node.config.get("seconds")},
        )
        _advance(b, cfg)
    elif timer.kind is TimerKind.RETRY:
        _start_node(b, node, timer.attempt + 1, cfg)
    elif timer.kind is TimerKind.THROTTLE:
        _start_node(b, node, timer.attempt, cfg, reason="rate limit wait over; dispatched again")
    elif timer.kind is TimerKind.CHILD:
        _child_timed_out(b, node, timer.attempt, cfg)
    elif timer.kind is TimerKind.SIGNAL_TIMEOUT:
        seconds = _signal_timeout(node, cfg)
        error = NodeError(
            error_class="timeout",
            retryable=True,
            message=f"no signal {node.config.get('name')!r} within {seconds:g}s",
        )
        _fail_node(b, node, timer.attempt, error, cfg)
    elif timer.attempt >= cfg.max_lease_attempts + _extra_attempts(b, node):  # LEASE
        error = NodeError(
            error_class="lease_expired",
            retryable=False,
            message=f"no result after {timer.attempt} dispatches",
        )
        b.emit(EventType.NODE_FAILED, node_id=node.id, attempt=timer.attempt, error=error)
        _terminate(b, ExecutionStatus.FAILED, f"node {node.id} failed: {error.message}")
    else:
        _start_node(b, node, timer.attempt + 1, cfg, reason="lease expired; dispatched again")


def _child_timed_out(b: _Builder, node: NodeDefinition, attempt: int, cfg: DeciderConfig) -> None:
    """A ``workflow`` node whose child run did not end within the node's timeout fails with
    class ``timeout`` (retried as its policy says, by a new child); the step cancels the child."""
    timeout = node.timeout_seconds or cfg.kind(node.type).default_timeout_seconds
    error = NodeError(
        error_class="timeout", retryable=True, message=f"child run did not finish within {timeout:g}s"
    )
    _fail_node(b, node, attempt, error, cfg)


def _extra_attempts(b: _Builder, node: NodeDefinition) -> int:
    policy = b.s.workflow.retry_policy(node)
    return policy.max_attempts - 1 if policy else 0


def _fail_node(
    b: _Builder,
    node: NodeDefinition,
    attempt: int,
    error: NodeError,
    cfg: DeciderConfig,
    usage: dict[str, int] | None = None,
    logs: dict[str, str] | None = None,
) -> None:
    policy = b.s.workflow.retry_policy(node)
    if policy is not None and policy.would_retry(error.error_class, error.retryable, attempt):
        delay = policy.retry_delay(attempt, b.execution_id, node.id)
        b.emit(
            EventType.NODE_RETRY_SCHEDULED,
            node_id=node.id,
            attempt=attempt,
            error=error,
            due_at=b.now + timedelta(seconds=delay),
            usage=usage,
            logs=logs,
            reason=_retry_reason(policy, attempt, delay),
        )
        return
    reason = None
    if policy is not None and error.retryable and attempt < policy.max_attempts:
        reason = f"not retried: {error.error_class} is not in retry_on ({', '.join(policy.retry_on or ())})"
    b.emit(
        EventType.NODE_FAILED,
        node_id=node.id,
        attempt=attempt,
        error=error,
        usage=usage,
        logs=logs,
        reason=reason,
    )
    _terminate(b, ExecutionStatus.FAILED, f"node {node.id} failed: {error.message}")


def _retry_reason(policy: RetryPolicy, attempt: int, delay: float) -> str:
    """What a ``node_retry_scheduled`` event says of its delay: the backoff and the jitter taken off."""
    backoff = policy.delay(attempt)
    jitter = f", jitter -{backoff - delay:.3f}s" if policy.jitter else ""
    return f"retry in {delay:.3f}s (backoff {backoff:.3f}s{jitter})"


def _terminate(b: _Builder, status: ExecutionStatus, reason: str) -> None:
    """End the run: stop running nodes, settle pending ones, then record the outcome."""
    for node in b.s.workflow.nodes:
        current = b.s.nodes[node.id].status
        if current is NodeStatus.RUNNING or (
            current is NodeStatus.PENDING and status is ExecutionStatus.CANCELLED
        ):
            b.emit(EventType.NODE_CANCELLED, node_id=node.id, reason=reason)
        elif current is NodeStatus.PENDING:
            b.emit(EventType.NODE_SKIPPED, node_id=node.id, reason=reason)
    end = {
        ExecutionStatus.FAILED: EventType.EXECUTION_FAILED,
        ExecutionStatus.CANCELLED: EventType.EXECUTION_CANCELLED,
    }[status]
    b.emit(end, reason=reason)


def _readiness(b: _Builder, node: NodeDefinition) -> NodeStatus | None:
    """RUNNING if the node may start, SKIPPED if every path to it is excluded, None to wait."""
    satisfied = not node.depends_on
    for text in node.depends_on:
        dep = Dependency.parse(text)
        ds = b.s.nodes[dep.node]
        if ds.status in (NodeStatus.PENDING, NodeStatus.RUNNING):
            return None
        if ds.status is NodeStatus.SUCCESS and (dep.branch is None or ds.output is dep.branch):
            satisfied = True
    return NodeStatus.RUNNING if satisfied else NodeStatus.SKIPPED


def _advance(b: _Builder, cfg: DeciderConfig) -> None:
    """Start every ready node and skip every excluded one, until nothing changes; then finish.
    A paused run does neither: resuming advances it."""
    if b.s.status is ExecutionStatus.PAUSED:
        return
    progressed = True
    while progressed:
        progressed = False
        for node in b.s.workflow.nodes:
            if b.s.nodes[node.id].status is not NodeStatus.PENDING:
                continue
            verdict = _readiness(b, node)
            if verdict is NodeStatus.SKIPPED:
                b.emit(EventType.NODE_SKIPPED, node_id=node.id, reason="no dependency path was taken")
                progressed = True
            elif verdict is NodeStatus.RUNNING:
                _start_node(b, node, 1, cfg)
    if not b.s.status.terminal and all(
        n.status not in (NodeStatus.PENDING, NodeStatus.RUNNING) for n in b.s.nodes.values()
    ):  # a wait_event node whose key cannot be computed fails (and may end the run) as it starts
        b.emit(EventType.EXECUTION_SUCCEEDED)


def _start_node(
    b: _Builder, node: NodeDefinition, attempt: int, cfg: DeciderConfig, reason: str | None = None
) -> None:
    kind = cfg.kind(node.type)
    key: str | None = None
    failure: NodeFailure | None = None
    if kind.dispatch is Dispatch.TIMER:
        due = b.now + timedelta(seconds=float(node.config.get("seconds", 0)))
    elif kind.dispatch is Dispatch.SIGNAL:
        due = b.now + timedelta(seconds=_signal_timeout(node, cfg))
        try:
            key = correlation_key(
                node.config.get("correlation_key"),
                b.s.node_inputs(),
                now=b.now,
                seed=f"{b.execution_id}/{node.id}/{attempt}",
            )
        except NodeFailure as exc:
            failure = exc
    elif kind.dispatch is Dispatch.TASK:
        timeout = node.timeout_seconds or kind.default_timeout_seconds
        due = b.now + timedelta(seconds=timeout + cfg.lease_grace_seconds)
    elif kind.dispatch is Dispatch.CHILD:
        due = b.now + timedelta(seconds=node.timeout_seconds or kind.default_timeout_seconds)
    else:
        due = None
    b.emit(
        EventType.NODE_STARTED,
        node_id=node.id,
        attempt=attempt,
        dispatch=kind.dispatch,
        due_at=due,
        reason=reason,
        correlation_key=key,
    )
    if failure is not None:
        _fail_node(b, node, attempt, failure.to_error(), cfg)


def _signal_timeout(node: NodeDefinition, cfg: DeciderConfig) -> float:
    """How long a ``wait_event`` node waits: its ``timeout_seconds``, else its type's default."""
    seconds = node.config.get("timeout_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return float(seconds)
    return cfg.kind(node.type).default_timeout_seconds
