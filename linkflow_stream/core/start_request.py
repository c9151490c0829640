"""Starting runs from Kafka: the public ``StartRequest`` record and how it becomes the internal
``StartExecution``.

Invariant: the execution id of a start request is a function of the request and the record that
carried it, never of the moment it is read. A redelivered record therefore names the same run,
and the orchestrator (and the intake's look-up of runs that already exist) starts it once:

* ``idempotency_key`` given: the HTTP API's derivation (``core/idempotency.py``): the workflow's
  team, the key and the 24-hour window of the record's timestamp; the same key over HTTP and
  over Kafka names the same run.
* ``execution_id`` given: that id, if it is well formed.
* neither: a digest of the record's position (topic, partition, offset) and timestamp. The
  timestamp keeps ids apart when a topic is deleted and created again and offsets restart.

Giving both a key and an id is refused: it is not clear which one the producer means to count.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.idempotency import check_key, execution_ids
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.workflow import WorkflowDefinition

EXECUTION_ID = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.-]{1,128}")
"""A producer-chosen execution id: URL-safe, so every ``/api/executions/{id}`` route can name it.
Not ``.`` or ``..``: a browser and most HTTP clients resolve those path segments away, so
``/api/executions/..`` (or the UI's ``/ui/executions/..``) would name another route."""


class StartRequest(BaseModel):
    """Value of ``linkflow.start`` (schema ``io.linkflow.StartRequest``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_id: str = Field(min_length=1)
    workflow_version: int | None = Field(default=None, ge=1)
    input: Any = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    execution_id: str | None = None
    links: dict[str, str] = {}
    """What asks for the run, by name (the scheduler sets ``schedule_id``); copied onto the run."""


@dataclass(frozen=True)
class Origin:
    """Where a start request was read: the record's real topic, partition, offset and timestamp."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class UnknownWorkflowError(ValidationError):
    """The request names a workflow, or a version of one, this engine does not hold."""

    error_type = "unknown_workflow"


def check_execution_id(execution_id: str) -> str:
    if not EXECUTION_ID.fullmatch(execution_id):
        raise ValidationError(
            f"execution_id {execution_id[:140]!r} must be 1 to 128 letters, digits, '_', '.' or '-' "
            "(and not '.' or '..')"
        )
    return execution_id


def position_id(origin: Origin) -> str:
    """The execution id of a request that names none: fixed by the record's place in the log."""
    text = f"{origin.topic}\x00{origin.partition}\x00{origin.offset}\x00{origin.timestamp_ms}"
    return f"exec_{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def candidate_ids(request: StartRequest, team: str, origin: Origin, at: datetime) -> tuple[str, ...]:
    """The ids the request may name, the one to start under first.

    With an idempotency key there are two: this window's id and the previous window's, which
    names the same run if that run began less than 24 hours before ``at`` (the caller looks)."""
    if request.idempotency_key is not None and request.execution_id is not None:
        raise ValidationError("give idempotency_key or execution_id, not both")
    if request.idempotency_key is not None:
        return execution_ids(team, check_key(request.idempotency_key), at)
    if request.execution_id is not None:
        return (check_execution_id(request.execution_id),)
    return (position_id(origin),)


def choose_workflow(
    request: StartRequest, latest: WorkflowDefinition | None, pinned: WorkflowDefinition | None
) -> WorkflowDefinition:
    """The definition the run keeps: the version asked for (``pinned``, found by the caller),
    else the latest."""
    if latest is None:
        raise UnknownWorkflowError(f"workflow {request.workflow_id!r} is not registered")
    if request.workflow_version is None:
        return latest
    if pinned is None:
        raise UnknownWorkflowError(
            f"workflow {request.workflow_id!r} has no version {request.workflow_version} "
            f"(the latest is {latest.version})"
        )
    return pinned


def start_execution(
    request: StartRequest, workflow: WorkflowDefinition, execution_id: str, at: datetime
) -> StartExecution:
    return StartExecution(
        execution_id=execution_id,
        workflow=workflow,
        input=request.input,
        priority=request.priority,
        requested_at=at,
        links=request.links,
    )
