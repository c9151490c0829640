"""The shapes of the JSON bodies the APIs answer with, as ``TypedDict`` s.

They are types only (no validation runs on the way out): ``http.openapi`` turns them into the
response schemas of ``GET /openapi.json``, and ``linkflow_stream.client`` returns them, so the
document and the typed client say the same. The builders of these bodies (``projections.status``
``render``, the handlers in ``http.api``) are what they describe; a test compares a real answer
against the schema.

``typing_extensions.TypedDict`` rather than ``typing``'s: pydantic needs it on Python 3.11 to read
the fields' types for the schema.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

ExecutionStatus = Literal["pending", "queued", "running", "success", "failed", "cancelled", "paused"]
Priority = Literal["high", "normal", "low"]


class ErrorDetail(TypedDict):
    type: str
    """``validation``, ``unauthorized``, ``forbidden``, ``not_found``, ``conflict``,
    ``unavailable``, ``method_not_allowed``, ``too_large``."""
    message: str


class ErrorBody(TypedDict):
    """Every 4xx (and the 503 of an unacknowledged start) carries this body."""

    error: ErrorDetail


class WorkflowRegistered(TypedDict):
    id: str
    version: int
    webhook_token: NotRequired[str]
    """On a workflow's first version only: its webhook token, shown this once."""
    unchanged: NotRequired[bool]
    """``true`` (status 200) when the definition was the latest version's: no version was made."""


class WebhookToken(TypedDict):
    id: str
    webhook_token: str


class WorkflowSummary(TypedDict):
    id: str
    version: int
    name: str
    team: str | None


class WorkflowList(TypedDict):
    workflows: list[WorkflowSummary]


class Accepted(TypedDict):
    """A start without ``wait`` (``pending``), a cancel (``cancelling``), a recover (``recovering``),
    a pause (``pausing``, with ``deadline``), a resume (``resuming``)."""

    id: str
    status: str
    deadline: NotRequired[str]
    """A pause only: ``keep`` or ``suspend``, what the run's deadline does while paused."""


class NodeError(TypedDict):
    error_class: str
    message: str
    retryable: bool


class NodeStatus(TypedDict):
    status: str
    output: Any
    error: NodeError | None
    attempts: int
    started_at: str | None
    finished_at: str | None
    usage: dict[str, int] | None
    logs: dict[str, str] | None
    """What a code node printed: ``stdout`` and ``stderr``."""
    reused: bool
    """A rerun's node that took its output from the run it reruns instead of running."""


class ExecutionSummary(TypedDict):
    """A run without its data (input, nodes, history): each entry of ``GET /api/executions`` with
    ``view=summary``."""

    id: str
    workflow_id: str
    workflow_version: int
    team: str | None
    status: ExecutionStatus
    priority: Priority
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    deadline_at: str | None
    schedule_id: str | None
    """The schedule whose slot started the run; ``null`` for other runs."""
    rerun_of: str | None
    """The run this one reruns (``POST /api/executions/{id}/rerun``)."""
    reruns: NotRequired[list[str]]
    """``GET /api/executions/{id}`` only: the runs that rerun this one, oldest first."""
    error_of: str | None
    """An error-workflow run: the failed run that started it (ADR 0036); ``null`` otherwise."""
    parent: str | None
    """A child run: the run whose ``workflow`` node started it (ADR 0036); ``null`` otherwise."""
    children: NotRequired[list[str]]
    """``GET /api/executions/{id}`` only: the child runs of this run's ``workflow`` nodes (ADR 0036)."""


class Execution(ExecutionSummary):
    """``GET /api/executions/{id}``; also a finished start with ``wait``, and each list entry."""

    input_data: Any
    nodes: dict[str, NodeStatus]
    history: list[dict[str, Any]]
    """Transitions: ``{"from", "to", "at", "reason"}``."""


class ExecutionPage(TypedDict):
    executions: list[Execution]
    count: int
    next_cursor: str | None
    """Pass it back as ``cursor`` for the next page; ``null`` on the last."""


class ExecutionSummaryPage(TypedDict):
    """``GET /api/executions?view=summary``."""

    executions: list[ExecutionSummary]
    count: int
    next_cursor: str | None


class LogLine(TypedDict):
    at: str
    level: Literal["debug", "info", "warning", "error"]
    node_id: str | None
    message: str
    data: Any


class LogPage(TypedDict):
    id: str
    logs: list[LogLine]
    count: int


class Health(TypedDict):
    status: str


class Readiness(TypedDict):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]


Document = dict[str, Any]
"""A body this module does not spell out field by field (cost reports, metrics, queue status)."""


class Circuit(TypedDict):
    """One circuit breaker (``core.circuit.render``)."""

    kind: Literal["http", "db"]
    key: str
    """The HTTP origin (``scheme://host:port``) or the database connection's name."""
    state: Literal["closed", "open", "half_open"]
    failures: int
    """Counted failures within the window (all since it opened, while open)."""
    threshold: int
    window_seconds: float
    open_seconds: float
    opened_at: str | None
    half_open_at: str | None
    """When an open circuit lets its probe through."""
    opened_total: int
    last_error: str | None
    changed_at: str | None


class CircuitList(TypedDict):
    circuits: list[Circuit]
    count: int
