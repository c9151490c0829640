"""Inputs of the orchestrator and the executors: the records on the request, command, task,
result and control topics."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator

from linkflow_stream.core.rate_limit import RateLimitBucket
from linkflow_stream.core.workflow import MAX_TIMEOUT_SECONDS, WorkflowDefinition


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class CommandKind(StrEnum):
    CANCEL = "cancel"
    TIMER_FIRED = "timer_fired"
    SET_TIMEOUT = "set_timeout"
    RECOVER = "recover"
    PAUSE = "pause"
    RESUME = "resume"
    SIGNAL = "signal"
    ADMIT = "admit"
    """From the gate (ADR 0030): a queued run may start now."""


class Signal(BaseModel):
    """An outside event for a run's ``wait_event`` node: the value of ``linkflow.signals``, the
    ``signal`` of a ``signal`` command, and each signal a run keeps until a node consumes it.

    Addressed to one run by ``execution_id``, or to every run waiting on ``name`` with
    ``correlation_key``. ``id`` names it: a run takes a signal id once, so a duplicate (a client
    retry, a record read again) changes nothing."""

    model_config = ConfigDict(frozen=True)

    name: str
    id: str | None = None
    payload: Any = None
    execution_id: str | None = None
    correlation_key: str | None = None


class NodeError(BaseModel):
    """Why a node attempt failed, and whether trying again may help."""

    model_config = ConfigDict(frozen=True)

    error_class: str
    message: str
    retryable: bool = False


class StartExecution(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    workflow: WorkflowDefinition
    input: Any
    priority: Priority = Priority.NORMAL
    requested_at: datetime
    traceparent: str | None = None
    """W3C ``traceparent`` of the caller whose trace the run continues: the API's send span, or
    the ``traceparent`` header of a producer's record. Default ``None``: the run starts a trace."""
    links: dict[str, str] = {}
    """What started the run, by name (``schedule_id``, ...); empty for a plain start."""
    reused: dict[str, Any] | None = None
    """A rerun: node id -> the output it takes from the run it reruns (``links["rerun_of"]``)
    instead of running the node (``core/rerun.py`` chooses them)."""


class ExecutionCommand(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    kind: CommandKind
    reason: str | None = None
    timer_id: str | None = None
    timeout_seconds: float | None = None
    """set_timeout: the run's total time budget, counted from its start."""
    due_at: datetime | None = None
    """timer_fired: the due time of the timer this firing is for. A firing whose due time is not
    the timer's (a deadline that moved since) is stale; ``None`` (older producers) skips that check."""
    suspend_deadline: bool = False
    """pause: stop the run's deadline while it is paused (it moves on by the paused time at
    resume). Default ``False``: the deadline still applies while paused."""
    signal: Signal | None = None
    """signal: the signal delivered to the run (its ``id`` is set)."""

    @model_validator(mode="after")
    def _carries_what_its_kind_needs(self) -> Self:
        """A command without what its kind acts on is refused when it is read (the orchestrator
        dead-letters it with this reason), not taken and ignored: a producer writing to
        ``linkflow.commands`` learns why its command did nothing."""
        if self.kind is CommandKind.SET_TIMEOUT:
            seconds = self.timeout_seconds
            if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
                raise ValueError(
                    f"a set_timeout command needs timeout_seconds above 0 and at most "
                    f"{MAX_TIMEOUT_SECONDS:g}, got {seconds!r}"
                )
        elif self.kind is CommandKind.TIMER_FIRED and self.timer_id is None:
            raise ValueError("a timer_fired command needs a timer_id")
        elif self.kind is CommandKind.SIGNAL and (self.signal is None or self.signal.id is None):
            raise ValueError("a signal command needs a signal with an id")
        return self


class NodeTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    workflow_id: str
    node_id: str
    attempt: int
    node_type: str
    config: dict[str, Any]
    input: dict[str, Any]
    timeout_seconds: float
    lease_until: datetime
    rate_limit: RateLimitBucket | None = None
    """The bucket the attempt takes a token from before it calls out. Default ``None``: no limit."""


class NodeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    node_id: str
    attempt: int
    ok: bool
    output: Any = None
    error: NodeError | None = None
    started_at: datetime
    finished_at: datetime
    worker_id: str | None = None
    usage: dict[str, int] | None = None
    logs: dict[str, str] | None = None
    throttled_until: datetime | None = None
    """Set when the attempt did not run because its rate limit had no token: dispatch it again
    at this time. Not a failure and not an attempt of the retry policy. Default ``None``."""
    lease_until: datetime | None = None
    """The ``lease_until`` of the task this result answers: which dispatch of the attempt it is
    (a throttled attempt is dispatched again under the same number). Default ``None``: unknown."""


class ControlMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    node_id: str | None = None
    reason: str = "cancelled"
