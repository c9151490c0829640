"""The spans of runs and node attempts, made from committed orchestrator steps.

A span is made once what it describes is over and committed: a node attempt's span when the
event that ends the attempt commits (succeeded, failed, retry scheduled, cancelled, or a new
attempt dispatched over an unanswered one), the run's span when its terminal event commits. Its
start and end are the events' times (the input records' timestamps), its ids are derived
(``core/trace_context.py``), so it does not matter which instance, before or after a restart or
a takeover, commits the end: the span comes out the same and its children, exported earlier and
elsewhere, already name it as parent. A batch whose transaction aborted exported nothing, so
deciding it again exports each span once; a process killed between a commit and the export loses
those spans (export is at most once, like any batched exporter's).

Span events: ``retry scheduled`` on the attempt that failed into a retry (when, which attempt
next, the error class), and ``timer fired`` where a durable timer ended something (a wait node's
attempt, an attempt whose lease ran out, the run at its deadline).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from opentelemetry.context import Context
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from linkflow_stream.core.clock import iso
from linkflow_stream.core.decider import Input
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.inline_attempts import is_merged, started_half
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeError
from linkflow_stream.core.state import ExecutionState, NodeStatus, Timer, TimerKind, evolve
from linkflow_stream.core.trace_context import RunTrace
from linkflow_stream.tracing.attributes import (
    EXECUTION_ID,
    EXECUTION_PRIORITY,
    EXECUTION_STATUS,
    NODE_ATTEMPT,
    NODE_ID,
    NODE_TYPE,
    RETRY_DELAY_SECONDS,
    RETRY_DUE_AT,
    TIMER_DUE_AT,
    TIMER_KIND,
    WORKFLOW_ID,
    WORKFLOW_VERSION,
)
from linkflow_stream.tracing.provider import Tracing, nanos, pinned

RETRY_SCHEDULED = "retry scheduled"
TIMER_FIRED = "timer fired"

_RUN_END = frozenset(
    {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
)

SpanEvent = tuple[str, datetime, dict[str, AttributeValue]]


def _fired(before: ExecutionState | None, cause: Input) -> Timer | None:
    """The durable timer whose firing ``cause`` is, if it is one."""
    if before is None or not isinstance(cause, ExecutionCommand) or cause.kind is not CommandKind.TIMER_FIRED:
        return None
    return before.timers.get(cause.timer_id or "")


def _timer_event(timer: Timer, at: datetime) -> SpanEvent:
    return (TIMER_FIRED, at, {TIMER_KIND: timer.kind.value, TIMER_DUE_AT: iso(timer.due_at)})


def _open_attempt(state: ExecutionState, node_id: str) -> bool:
    """Whether the node's latest attempt is still going (not ended into a scheduled retry, nor
    parked waiting for a rate limit's token)."""
    node = state.nodes[node_id]
    retrying = any(
        t.kind in (TimerKind.RETRY, TimerKind.THROTTLE) and t.node_id == node_id
        for t in state.timers.values()
    )
    return node.status is NodeStatus.RUNNING and node.attempts > 0 and not retrying


class ExecutionSpans:
    """Turns each committed step (the state before it, its input and its events) into spans."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.tracer = tracing.tracer

    def record(self, before: ExecutionState | None, cause: Input, events: Sequence[ExecutionEvent]) -> None:
        """Export the spans that ``events`` (committed, following ``before``) complete."""
        fired = _fired(before, cause)
        state = before
        for event in events:
            prior, state = state, evolve(state, event)
            if is_merged(event):  # an inline attempt in one event: its span opens as it ends
                prior = evolve(prior, started_half(event))
            if event.type in _RUN_END:
                self._run(state, event, fired)
            elif prior is not None and event.node_id is not None:
                self._node_event(prior, event, fired)

    # -- node attempts ----------------------------------------------------------------------------
    def _node_event(self, prior: ExecutionState, event: ExecutionEvent, fired: Timer | None) -> None:
        node_id = event.node_id
        assert node_id is not None
        if not _open_attempt(prior, node_id):
            return  # skipped, or its attempt already ended (a retry is scheduled): nothing to close
        timer = fired if fired is not None and fired.node_id == node_id else None
        marks: list[SpanEvent] = [_timer_event(timer, event.at)] if timer is not None else []
        kind = event.type
        if kind is EventType.NODE_SUCCEEDED:
            self._attempt(prior, node_id, event.at, marks)
        elif kind is EventType.NODE_FAILED:
            self._attempt(prior, node_id, event.at, marks, error=event.error)
        elif kind is EventType.NODE_RETRY_SCHEDULED:
            assert event.due_at is not None
            error_class = event.error.error_class if event.error else "unknown"
            marks.append(
                (
                    RETRY_SCHEDULED,
                    event.at,
                    {
                        NODE_ATTEMPT: prior.nodes[node_id].attempts + 1,
                        RETRY_DUE_AT: iso(event.due_at),
                        RETRY_DELAY_SECONDS: (event.due_at - event.at).total_seconds(),
                        ERROR_TYPE: error_class,
                    },
                )
            )
            self._attempt(prior, node_id, event.at, marks, error=event.error)
        elif kind is EventType.NODE_CANCELLED:
            cancelled = NodeError(error_class="cancelled", message=event.reason or "cancelled")
            self._attempt(prior, node_id, event.at, marks, error=cancelled)
        elif kind is EventType.NODE_STARTED:
            # A new attempt over one that never answered (its lease ran out, or a recover).
            reason = event.reason or "dispatched again"
            unanswered = NodeError(error_class="lease_expired", message=reason)
            self._attempt(prior, node_id, event.at, marks, error=unanswered)

    def _attempt(
        self,
        prior: ExecutionState,
        node_id: str,
        end: datetime,
        marks: list[SpanEvent],
        *,
        error: NodeError | None = None,
    ) -> None:
        node = prior.nodes[node_id]
        run = RunTrace.of(prior.id, prior.traceparent)
        start = node.attempt_started_at or node.started_at or end
        attributes: dict[str, AttributeValue] = {
            EXECUTION_ID: prior.id,
            WORKFLOW_ID: prior.workflow.id,
            WORKFLOW_VERSION: prior.workflow.version,
            NODE_ID: node_id,
            NODE_TYPE: prior.workflow.node(node_id).type,
            NODE_ATTEMPT: node.attempts,
        }
        with pinned(None, run.attempt_span_id(node_id, node.attempts)):
            span = self.tracer.start_span(
                f"node {node_id}",
                context=self.tracing.run_span_context(run),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=nanos(start),
            )
        for name, at, values in marks:
            span.add_event(name, values, timestamp=nanos(at))
        if error is not None:
            span.set_attribute(ERROR_TYPE, error.error_class)
            span.set_status(Status(StatusCode.ERROR, error.message))
        span.end(end_time=nanos(max(start, end)))

    # -- the run ----------------------------------------------------------------------------------
    def _run(self, state: ExecutionState, event: ExecutionEvent, fired: Timer | None) -> None:
        run = RunTrace.of(state.id, state.traceparent)
        parent = Context()
        if run.parent_span_id is not None:
            flags = TraceFlags(TraceFlags.SAMPLED if run.parent_sampled else TraceFlags.DEFAULT)
            caller = SpanContext(
                int(run.trace_id, 16), int(run.parent_span_id, 16), is_remote=True, trace_flags=flags
            )
            parent = set_span_in_context(NonRecordingSpan(caller), parent)
        attributes: dict[str, AttributeValue] = {
            EXECUTION_ID: state.id,
            WORKFLOW_ID: state.workflow.id,
            WORKFLOW_VERSION: state.workflow.version,
            EXECUTION_STATUS: state.status.value,
            EXECUTION_PRIORITY: state.priority.value,
        }
        with pinned(run.trace_id, run.span_id):
            span = self.tracer.start_span(
                f"execution {state.workflow.id}",
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=nanos(state.created_at),
            )
        if fired is not None and fired.kind is TimerKind.EXECUTION_TIMEOUT:
            name, at, values = _timer_event(fired, event.at)
            span.add_event(name, values, timestamp=nanos(at))
        if event.type is not EventType.EXECUTION_SUCCEEDED:
            span.set_attribute(ERROR_TYPE, _run_error_class(state, event))
            span.set_status(Status(StatusCode.ERROR, event.reason or state.status.value))
        span.end(end_time=nanos(max(state.created_at, event.at)))


def _run_error_class(state: ExecutionState, event: ExecutionEvent) -> str:
    """The class of a run's failure: its failed node's, ``timeout`` at its deadline, or
    ``cancelled``."""
    if event.type is EventType.EXECUTION_CANCELLED:
        return "cancelled"
    for node in state.nodes.values():
        if node.status is NodeStatus.FAILED and node.error is not None:
            return node.error.error_class
    if (event.reason or "").startswith("execution timed out"):
        return "timeout"
    return "failed"
