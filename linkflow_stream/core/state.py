"""Execution state and ``evolve``: the one fold of execution events.

The orchestrator folds its own events to know what to decide next, and the status view folds
the same events to answer reads, so both share this code. ``evolve`` is pure: the new state
depends only on the old state and the event.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.inline_attempts import is_merged
from linkflow_stream.core.messages import NodeError, Priority, Signal
from linkflow_stream.core.workflow import WorkflowDefinition


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    """Started and not ended, but dispatching nothing new until resumed (ADR 0034)."""
    QUEUED = "queued"
    """Created, waiting for a concurrency slot (ADR 0030)."""

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class TimerKind(StrEnum):
    WAIT = "wait"
    LEASE = "lease"
    RETRY = "retry"
    EXECUTION_TIMEOUT = "execution_timeout"
    THROTTLE = "throttle"
    CHILD = "child"
    """A ``workflow`` node's timeout while its child run runs (ADR 0036)."""
    SIGNAL_TIMEOUT = "signal_timeout"
    """A ``wait_event`` node's limit: fired before a signal came, the node fails (``timeout``)."""


class NodeState(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: NodeStatus = NodeStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: NodeError | None = None
    started_at: datetime | None = None
    """When the first attempt started."""
    finished_at: datetime | None = None
    usage: dict[str, int] | None = None
    logs: dict[str, str] | None = None
    reused: bool = False
    """Its output was taken from the run this one reruns; it did not run here."""
    attempt_started_at: datetime | None = None
    """When the current (latest) attempt started: where its span begins. ``None`` in states
    written before it was kept."""
    correlation_key: str | None = None
    """A ``wait_event`` node's evaluated ``correlation_key`` (set when it starts waiting)."""


PENDING_NODE = NodeState()
"""Every node of a new run starts as this one object (``pending_nodes``)."""


def pending_nodes(workflow: WorkflowDefinition) -> dict[str, NodeState]:
    """A new run's node states: all ``PENDING_NODE``, one frozen object, so sharing is safe. The
    codec keeps a node state's bytes per object, so the pending nodes of a new run's first
    snapshot and of the views' pending rows are encoded once (again only after the codec's cache
    lets it go), not once per node of every run."""
    return dict.fromkeys((n.id for n in workflow.nodes), PENDING_NODE)


class Timer(BaseModel):
    """A durable timer. Its id names the attempt it belongs to, so a stale one matches nothing."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: TimerKind
    due_at: datetime
    node_id: str | None = None
    attempt: int | None = None

    @staticmethod
    def make_id(kind: TimerKind, node_id: str | None = None, attempt: int | None = None) -> str:
        return kind.value if node_id is None else f"{kind.value}:{node_id}:{attempt}"


class Transition(BaseModel):
    model_config = ConfigDict(frozen=True)

    from_status: ExecutionStatus | None
    to_status: ExecutionStatus
    at: datetime
    reason: str | None = None


class ExecutionState(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    workflow: WorkflowDefinition
    status: ExecutionStatus
    priority: Priority = Priority.NORMAL
    input: Any
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seq: int
    nodes: dict[str, NodeState]
    timers: dict[str, Timer] = {}
    history: tuple[Transition, ...] = ()
    traceparent: str | None = None
    """The W3C ``traceparent`` of the caller whose trace this run continues; ``None``: the run
    starts its own. The run's own span ids derive from its id (``core/trace_context.py``)."""
    links: dict[str, str] = {}
    """What started the run, by name (``schedule_id``, ...)."""
    paused_at: datetime | None = None
    """When the run was paused; ``None`` unless its status is ``paused``."""
    suspended_deadline: datetime | None = None
    """The deadline a pause with ``suspend_deadline`` took off the timers; ``None`` when none is
    suspended. Resuming sets it again, moved on by the time the run was paused."""
    signals: tuple[Signal, ...] = ()
    """Signals received and not consumed yet, oldest first: one that came before its node waits
    is kept here until the node starts waiting."""
    signal_ids: tuple[str, ...] = ()
    """Every signal id the run received: a signal whose id is here is a duplicate."""

    @property
    def gated(self) -> bool:
        """Whether the run went through the gate (was queued): its end releases a slot there."""
        return any(t.to_status is ExecutionStatus.QUEUED for t in self.history)

    def node_inputs(self) -> dict[str, Any]:
        """What expressions and executors see: the run's input and every finished node's output."""
        return {
            "input": self.input,
            "nodes": {k: v.output for k, v in self.nodes.items() if v.status is NodeStatus.SUCCESS},
        }


class EvolveError(ValueError):
    """An event that cannot follow the state it was applied to: a bug or a corrupt log."""


_EXECUTION_END = {
    EventType.EXECUTION_SUCCEEDED: ExecutionStatus.SUCCESS,
    EventType.EXECUTION_FAILED: ExecutionStatus.FAILED,
    EventType.EXECUTION_CANCELLED: ExecutionStatus.CANCELLED,
}
_NODE_END = {
    EventType.NODE_SUCCEEDED: NodeStatus.SUCCESS,
    EventType.NODE_FAILED: NodeStatus.FAILED,
    EventType.NODE_SKIPPED: NodeStatus.SKIPPED,
    EventType.NODE_CANCELLED: NodeStatus.CANCELLED,
}


def apply(state: ExecutionState | None, event: ExecutionEvent) -> ExecutionState | None:
    """``evolve`` for consumers of the log: a seq already applied is a duplicate and changes nothing."""
    if state is not None and event.seq <= state.seq:
        return state
    if state is None and event.type is not EventType.EXECUTION_CREATED:
        return None  # the head of this execution's log was lost to retention; nothing to build on
    return evolve(state, event)


def evolve(state: ExecutionState | None, event: ExecutionEvent) -> ExecutionState:
    """Apply one event. Raises ``EvolveError`` for an event that cannot follow ``state``."""
    if event.type is EventType.EXECUTION_CREATED:
        if state is not None or event.workflow is None:
            raise EvolveError(f"{event.execution_id}: execution_created must come first, with a workflow")
        return ExecutionState(
            id=event.execution_id,
            workflow=event.workflow,
            status=ExecutionStatus.PENDING,
            priority=event.priority or Priority.NORMAL,
            input=event.input,
            created_at=event.at,
            seq=event.seq,
            nodes=pending_nodes(event.workflow),
            history=(Transition(from_status=None, to_status=ExecutionStatus.PENDING, at=event.at),),
            traceparent=event.traceparent,
            links=event.links or {},
        )
    if state is None:
        raise EvolveError(f"{event.execution_id}: {event.type} before execution_created")
    if state.status.terminal:
        raise EvolveError(f"{state.id}: {event.type} after the execution ended ({state.status})")
    if event.seq != state.seq + 1:
        raise EvolveError(f"{state.id}: seq {event.seq} does not follow {state.seq}")
    if event.type is EventType.EXECUTION_STARTED:
        return _transition(
            state,
            event,
            ExecutionStatus.RUNNING,
            started_at=event.at,
            timers=_with_timer(
                state.timers,
                Timer.make_id(TimerKind.EXECUTION_TIMEOUT),
                TimerKind.EXECUTION_TIMEOUT,
                event.due_at,
            ),
        )
    if event.type is EventType.EXECUTION_QUEUED:
        if state.status is not ExecutionStatus.PENDING:
            raise EvolveError(f"{state.id}: queued from {state.status}")
        return _transition(state, event, ExecutionStatus.QUEUED)
    if event.type is EventType.EXECUTION_DEADLINE_SET and state.suspended_deadline is not None:
        # the deadline is suspended by a pause: the new one stays suspended until resume
        return state.model_copy(update={"seq": event.seq, "suspended_deadline": event.due_at})
    if event.type in (EventType.EXECUTION_PAUSED, EventType.EXECUTION_RESUMED):
        return _pause_or_resume(state, event)
    if event.type is EventType.EXECUTION_DEADLINE_SET:
        timer_id = Timer.make_id(TimerKind.EXECUTION_TIMEOUT)
        timers = {k: t for k, t in state.timers.items() if k != timer_id}
        return state.model_copy(
            update={
                "seq": event.seq,
                "timers": _with_timer(timers, timer_id, TimerKind.EXECUTION_TIMEOUT, event.due_at),
            }
        )
    if event.type in _EXECUTION_END:
        return _transition(
            state,
            event,
            _EXECUTION_END[event.type],
            finished_at=event.at,
            timers={},
            paused_at=None,
            suspended_deadline=None,
        )
    if event.type is EventType.SIGNAL_RECEIVED:
        return _received(state, event)
    after = _evolve_node(state, event)
    if event.type is EventType.NODE_SUCCEEDED and event.signal is not None:
        consumed = event.signal.id
        after = after.model_copy(update={"signals": tuple(s for s in after.signals if s.id != consumed)})
    return after


def _received(state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
    """A signal the run keeps until a ``wait_event`` node consumes it."""
    signal = event.signal
    if signal is None or signal.id is None:
        raise EvolveError(f"{state.id}: signal_received without a signal id")
    return state.model_copy(
        update={
            "seq": event.seq,
            "signals": (*state.signals, signal),
            "signal_ids": (*state.signal_ids, signal.id),
        }
    )


_TIMER_OF = {
    Dispatch.TIMER: TimerKind.WAIT,
    Dispatch.CHILD: TimerKind.CHILD,
    Dispatch.SIGNAL: TimerKind.SIGNAL_TIMEOUT,
}
"""The timer a started node holds, by dispatch; a task's is its lease."""


def _pause_or_resume(state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
    """``execution_paused`` (from running) and ``execution_resumed`` (from paused). Their
    ``due_at`` is the deadline taken off the timers at pause and the one set again at resume."""
    deadline_id = Timer.make_id(TimerKind.EXECUTION_TIMEOUT)
    others = {k: t for k, t in state.timers.items() if k != deadline_id}
    if event.type is EventType.EXECUTION_PAUSED:
        if state.status is not ExecutionStatus.RUNNING:
            raise EvolveError(f"{state.id}: cannot pause from {state.status}")
        return _transition(
            state,
            event,
            ExecutionStatus.PAUSED,
            paused_at=event.at,
            suspended_deadline=event.due_at,
            timers=state.timers if event.due_at is None else others,
        )
    if state.status is not ExecutionStatus.PAUSED:
        raise EvolveError(f"{state.id}: cannot resume from {state.status}")
    timers = state.timers
    if event.due_at is not None:
        timers = _with_timer(others, deadline_id, TimerKind.EXECUTION_TIMEOUT, event.due_at)
    return _transition(
        state, event, ExecutionStatus.RUNNING, paused_at=None, suspended_deadline=None, timers=timers
    )


def _evolve_node(state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
    node_id = event.node_id
    if node_id is None or node_id not in state.nodes:
        raise EvolveError(f"{state.id}: {event.type} names unknown node {node_id!r}")
    node = state.nodes[node_id]
    timers = {k: t for k, t in state.timers.items() if t.node_id != node_id}
    if is_merged(event):  # an inline attempt, started and ended in one event (ADR 0056)
        # its start applied from the event's own fields: no second event object is built (the
        # merged start has no timer, reason or key: ``inline_attempts._mergeable_start``)
        node, timers = _started(
            state.id, node_id, node, timers, event.at, event.attempt, event.dispatch, None, None
        )
    new, timers = _node_transition(state.id, node, timers, event)
    if event.logs is not None:
        new = new.model_copy(update={"logs": event.logs})
    if event.usage:
        summed = dict(new.usage or {})
        for key, amount in event.usage.items():
            summed[key] = summed.get(key, 0) + amount
        new = new.model_copy(update={"usage": summed})
    return state.model_copy(
        update={"seq": event.seq, "nodes": {**state.nodes, node_id: new}, "timers": timers}
    )


def _node_transition(
    run_id: str, node: NodeState, timers: dict[str, Timer], event: ExecutionEvent
) -> tuple[NodeState, dict[str, Timer]]:
    """The node and the run's timers after ``event`` moves the node (its own timers already
    taken out of ``timers``); without the logs and usage the event carries."""
    node_id = event.node_id
    if event.type is EventType.NODE_STARTED:
        assert node_id is not None  # checked by _evolve_node
        new, timers = _started(
            run_id,
            node_id,
            node,
            timers,
            event.at,
            event.attempt,
            event.dispatch,
            event.due_at,
            event.correlation_key,
        )
    elif event.type is EventType.NODE_RETRY_SCHEDULED:
        if node.status is not NodeStatus.RUNNING:
            raise EvolveError(f"{run_id}: node {node_id} retry from {node.status}")
        new = node.model_copy(update={"error": event.error})
        timers = _with_timer(
            timers,
            Timer.make_id(TimerKind.RETRY, node_id, node.attempts),
            TimerKind.RETRY,
            event.due_at,
            node_id,
            node.attempts,
        )
    elif event.type is EventType.NODE_REUSED:
        if node.status is not NodeStatus.PENDING:
            raise EvolveError(f"{run_id}: node {node_id} reused from {node.status}")
        new = node.model_copy(
            update={
                "status": NodeStatus.SUCCESS,
                "output": event.output,
                "reused": True,
                "finished_at": event.at,
            }
        )
    elif event.type is EventType.NODE_THROTTLED:
        # The attempt did not run (its rate limit had no token): its lease gives way to a
        # throttle timer that dispatches the same attempt again.
        if node.status is not NodeStatus.RUNNING:
            raise EvolveError(f"{run_id}: node {node_id} throttled from {node.status}")
        new = node
        timers = _with_timer(
            timers,
            Timer.make_id(TimerKind.THROTTLE, node_id, node.attempts),
            TimerKind.THROTTLE,
            event.due_at,
            node_id,
            node.attempts,
        )
    elif event.type in _NODE_END:
        target = _NODE_END[event.type]
        allowed: tuple[NodeStatus, ...] = (
            (NodeStatus.PENDING,) if target is NodeStatus.SKIPPED else (NodeStatus.RUNNING,)
        )
        if target is NodeStatus.CANCELLED:
            allowed = (NodeStatus.PENDING, NodeStatus.RUNNING)
        if node.status not in allowed:
            raise EvolveError(f"{run_id}: node {node_id} cannot go from {node.status} to {target}")
        new = node.model_copy(
            update={
                "status": target,
                "finished_at": event.at,
                "output": event.output if target is NodeStatus.SUCCESS else None,
                "error": event.error if target is NodeStatus.FAILED else node.error,
            }
        )
    else:  # pragma: no cover - every EventType is handled above
        raise EvolveError(f"{run_id}: unhandled event {event.type}")
    return new, timers


def _started(
    run_id: str,
    node_id: str,
    node: NodeState,
    timers: dict[str, Timer],
    at: datetime,
    attempt: int | None,
    dispatch: Dispatch | None,
    due_at: datetime | None,
    correlation_key: str | None,
) -> tuple[NodeState, dict[str, Timer]]:
    """The node and the run's timers after an attempt of it starts: a ``node_started``, or the
    start half of a merged inline attempt (ADR 0056), taken from its fields."""
    if node.status not in (NodeStatus.PENDING, NodeStatus.RUNNING):
        raise EvolveError(f"{run_id}: node {node_id} cannot start from {node.status}")
    attempt = attempt or 1
    kind = _TIMER_OF.get(dispatch or Dispatch.TASK, TimerKind.LEASE)
    new = node.model_copy(
        update={
            "status": NodeStatus.RUNNING,
            "attempts": attempt,
            "output": None,
            "started_at": node.started_at or at,
            "attempt_started_at": at,
            "finished_at": None,
            "correlation_key": correlation_key,
        }
    )
    return new, _with_timer(timers, Timer.make_id(kind, node_id, attempt), kind, due_at, node_id, attempt)


def _with_timer(
    timers: dict[str, Timer],
    timer_id: str,
    kind: TimerKind,
    due_at: datetime | None,
    node_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Timer]:
    if due_at is None:
        return timers
    return {
        **timers,
        timer_id: Timer(id=timer_id, kind=kind, due_at=due_at, node_id=node_id, attempt=attempt),
    }


def _transition(
    state: ExecutionState, event: ExecutionEvent, to: ExecutionStatus, **update: Any
) -> ExecutionState:
    step = Transition(from_status=state.status, to_status=to, at=event.at, reason=event.reason)
    return state.model_copy(
        update={"seq": event.seq, "status": to, "history": (*state.history, step), **update}
    )
