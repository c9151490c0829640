"""Each API call as data: the request to send and how to read its answer, with no I/O.

The sync and the asyncio client both send these (over urllib and aiohttp), so a call is written
once and both clients mean the same by it. ``Call.read`` gets the answer and returns the typed
result or raises the mapped error (``_errors.error_for``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import quote, urlencode

from linkflow_stream.client._errors import error_for
from linkflow_stream.http.responses import (
    Accepted,
    Execution,
    ExecutionPage,
    ExecutionSummaryPage,
    LogLine,
    LogPage,
    Readiness,
    WorkflowList,
    WorkflowRegistered,
    WorkflowSummary,
)

T = TypeVar("T")

Priority = Literal["high", "normal", "low"]
Status = Literal["pending", "queued", "running", "success", "failed", "cancelled", "paused"]
TERMINAL: frozenset[str] = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the transports hand it over."""

    status: int
    headers: Mapping[str, str]
    """Names in lower case."""
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Started:
    """What a start answered: the run's id and status, and the finished ``execution`` when the run
    ended within ``wait`` (``None`` otherwise). ``replayed``: an earlier start with the same
    idempotency key named this run, and nothing new was started."""

    id: str
    status: str
    execution: Execution | None = None
    replayed: bool = False

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Answer], T]
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_extra: float = 0.0
    """Seconds the engine may hold the answer on purpose (``wait``), added to the client's timeout."""

    def url(self, base: str) -> str:
        return base.rstrip("/") + self.path + (f"?{urlencode(self.query)}" if self.query else "")

    def data(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode()


def _ok(answer: Answer, *expected: int) -> Any:
    """The decoded body of an expected status, else the mapped error."""
    body = answer.json()
    if answer.status not in expected:
        raise error_for(answer.status, body, answer.text, answer.headers)
    return body


def _expect(*statuses: int) -> Callable[[Answer], Any]:
    return lambda answer: _ok(answer, *statuses)


def _id(value: str) -> str:
    return quote(value, safe="")


def _time(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _query(**params: object) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v is not None}


# -- workflows ------------------------------------------------------------------------------------
def register_workflow(definition: Mapping[str, Any]) -> Call[WorkflowRegistered]:
    return Call("POST", "/api/workflows", _expect(201, 200), body=dict(definition))


def get_workflow(workflow_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/api/workflows/{_id(workflow_id)}", _expect(200))


def list_workflows() -> Call[list[WorkflowSummary]]:
    def read(answer: Answer) -> list[WorkflowSummary]:
        return cast(WorkflowList, _ok(answer, 200))["workflows"]

    return Call("GET", "/api/workflows", read)


def set_workflow_retry(workflow_id: str, policy: Mapping[str, Any]) -> Call[dict[str, Any]]:
    return Call("PUT", f"/api/workflows/{_id(workflow_id)}/retry", _expect(200), body=dict(policy))


# -- executions -----------------------------------------------------------------------------------
def start_execution(
    workflow_id: str,
    input_data: Any = None,
    *,
    wait: float | None = None,
    priority: Priority | None = None,
    idempotency_key: str | None = None,
) -> Call[Started]:
    headers: dict[str, str] = {}
    if priority is not None:
        headers["X-Priority"] = priority
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key

    def read(answer: Answer) -> Started:
        body = _ok(answer, 200, 202)
        replayed = answer.headers.get("idempotent-replayed", "").lower() == "true"
        if "nodes" in body:  # the whole execution: it ended within wait
            execution = cast(Execution, body)
            return Started(execution["id"], execution["status"], execution, replayed)
        return Started(body["id"], body["status"], None, replayed)

    return Call(
        "POST",
        "/api/executions",
        read,
        query=_query(wait=wait),
        body={"workflow_id": workflow_id, "input_data": {} if input_data is None else input_data},
        headers=headers,
        timeout_extra=wait or 0.0,
    )


def get_execution(execution_id: str) -> Call[Execution]:
    return Call("GET", f"/api/executions/{_id(execution_id)}", _expect(200))


def list_executions(
    *,
    status: Status | None = None,
    workflow_id: str | None = None,
    team: str | None = None,
    priority: Priority | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[ExecutionPage]:
    query = _query(
        status=status,
        workflow_id=workflow_id,
        team=team,
        priority=priority,
        created_after=_time(created_after),
        created_before=_time(created_before),
        limit=limit,
        cursor=cursor,
    )
    return Call("GET", "/api/executions", _expect(200), query=query)


def list_execution_summaries(
    *,
    status: Status | None = None,
    workflow_id: str | None = None,
    team: str | None = None,
    priority: Priority | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[ExecutionSummaryPage]:
    """``list_executions`` with ``view=summary``: each run without its input, nodes and history
    (ADR 0051), so a page of runs with large inputs stays small."""
    full = list_executions(
        status=status,
        workflow_id=workflow_id,
        team=team,
        priority=priority,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    return Call("GET", "/api/executions", _expect(200), query={**full.query, "view": "summary"})


def cancel_execution(execution_id: str) -> Call[Accepted]:
    return Call("POST", f"/api/executions/{_id(execution_id)}/cancel", _expect(202))


def pause_execution(execution_id: str, deadline: Literal["keep", "suspend"] = "keep") -> Call[Accepted]:
    return Call(
        "POST", f"/api/executions/{_id(execution_id)}/pause", _expect(202), body={"deadline": deadline}
    )


def resume_execution(execution_id: str) -> Call[Accepted]:
    return Call("POST", f"/api/executions/{_id(execution_id)}/resume", _expect(202))


def recover_execution(execution_id: str) -> Call[Accepted]:
    return Call("POST", f"/api/executions/{_id(execution_id)}/recover", _expect(202))


def set_timeout(execution_id: str, timeout_seconds: float) -> Call[dict[str, Any]]:
    body = {"timeout_seconds": timeout_seconds}
    return Call("PUT", f"/api/executions/{_id(execution_id)}/timeout", _expect(202), body=body)


def signal_execution(
    execution_id: str, name: str, payload: Any = None, signal_id: str | None = None
) -> Call[dict[str, Any]]:
    """Deliver signal ``name`` to one run (kept until its ``wait_event`` node takes it)."""
    headers = {"Idempotency-Key": signal_id} if signal_id else {}
    path = f"/api/executions/{_id(execution_id)}/events/{_id(name)}"
    return Call("POST", path, _expect(202), body=payload, headers=headers)


def broadcast_signal(
    name: str, correlation_key: str | int, payload: Any = None, signal_id: str | None = None
) -> Call[dict[str, Any]]:
    """Deliver signal ``name`` to every run waiting on it with ``correlation_key``."""
    body: dict[str, Any] = {"correlation_key": correlation_key, "payload": payload}
    if signal_id:
        body["id"] = signal_id
    return Call("POST", f"/api/events/{_id(name)}", _expect(202), body=body)


def execution_metrics(execution_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/api/executions/{_id(execution_id)}/metrics", _expect(200))


def logs(
    execution_id: str,
    *,
    level: Literal["debug", "info", "warning", "error"] | None = None,
    node_id: str | None = None,
    q: str | None = None,
    limit: int | None = None,
) -> Call[list[LogLine]]:
    def read(answer: Answer) -> list[LogLine]:
        return cast(LogPage, _ok(answer, 200))["logs"]

    query = _query(level=level, node_id=node_id, q=q, limit=limit)
    return Call("GET", f"/api/executions/{_id(execution_id)}/logs", read, query=query)


# -- costs and the rest ---------------------------------------------------------------------------
def execution_cost(execution_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/api/executions/{_id(execution_id)}/cost", _expect(200))


def cost_report(
    *,
    period: Literal["day", "week", "month", "all"] | None = None,
    group_by: Literal["workflow", "team"] | None = None,
) -> Call[dict[str, Any]]:
    return Call("GET", "/api/costs/report", _expect(200), query=_query(period=period, group_by=group_by))


def readiness() -> Call[Readiness]:
    """``/readyz``: 200 and 503 both answer the question, so neither is an error."""
    return Call("GET", "/readyz", _expect(200, 503))


def openapi() -> Call[dict[str, Any]]:
    return Call("GET", "/openapi.json", _expect(200))
