"""Inputs of the orchestrator and the executors: the records on the request, command, task,
result and control topics."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from linkflow_stream.core.workflow import WorkflowDefinition


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class CommandKind(StrEnum):
    CANCEL = "cancel"
    TIMER_FIRED = "timer_fired"
    SET_TIMEOUT = "set_timeout"
    RECOVER = "recover"
    ADMIT = "admit"
    """From the gate (ADR 0030): a queued run may start now."""


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


class ControlMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_id: str
    node_id: str | None = None
    reason: str = "cancelled"
