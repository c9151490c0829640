"""The execution event: every state transition of a run, appended to ``linkflow.events``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from linkflow_stream.core.messages import NodeError, Priority, Signal
from linkflow_stream.core.workflow import WorkflowDefinition


class EventType(StrEnum):
    EXECUTION_CREATED = "execution_created"
    EXECUTION_STARTED = "execution_started"
    NODE_STARTED = "node_started"
    NODE_SUCCEEDED = "node_succeeded"
    NODE_FAILED = "node_failed"
    NODE_RETRY_SCHEDULED = "node_retry_scheduled"
    NODE_SKIPPED = "node_skipped"
    NODE_CANCELLED = "node_cancelled"
    EXECUTION_SUCCEEDED = "execution_succeeded"
    EXECUTION_FAILED = "execution_failed"
    EXECUTION_CANCELLED = "execution_cancelled"
    EXECUTION_DEADLINE_SET = "execution_deadline_set"
    NODE_THROTTLED = "node_throttled"
    NODE_REUSED = "node_reused"
    EXECUTION_PAUSED = "execution_paused"
    """``due_at``: the run's deadline, suspended by this pause; ``None`` if it still applies."""
    EXECUTION_RESUMED = "execution_resumed"
    """``due_at``: the suspended deadline moved on by the paused time; ``None`` if none was."""
    SIGNAL_RECEIVED = "signal_received"
    EXECUTION_QUEUED = "execution_queued"
    """The run waits for a concurrency slot (ADR 0030); ``execution_started`` follows on admission."""


class Dispatch(StrEnum):
    """Where a started node runs."""

    TASK = "task"
    INLINE = "inline"
    TIMER = "timer"
    CHILD = "child"
    """A ``workflow`` node: a child run, waited for by a timer (ADR 0036); no worker slot."""
    SIGNAL = "signal"
    """Waits in the orchestrator's state for a signal (``wait_event``), with a timeout timer."""


class ExecutionEvent(BaseModel):
    """One transition. ``(execution_id, seq)`` identifies it; a repeated seq is a duplicate."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    seq: int
    type: EventType
    at: datetime
    node_id: str | None = None
    attempt: int | None = None
    workflow: WorkflowDefinition | None = None
    input: Any = None
    priority: Priority | None = None
    output: Any = None
    error: NodeError | None = None
    reason: str | None = None
    due_at: datetime | None = None
    dispatch: Dispatch | None = None
    usage: dict[str, int] | None = None
    logs: dict[str, str] | None = None
    traceparent: str | None = None
    """``execution_created`` only: the caller's W3C ``traceparent`` (see ``StartExecution``)."""
    links: dict[str, str] | None = None
    """``execution_created`` only: what started the run (see ``StartExecution.links``)."""
    signal: Signal | None = None
    """``signal_received``: the signal the run now keeps; ``node_succeeded`` of a ``wait_event``
    node: the kept signal it consumed (``name`` and ``id``; its payload is the output)."""
    correlation_key: str | None = None
    """``node_started`` of a ``wait_event`` node: its evaluated ``correlation_key``, if any."""
