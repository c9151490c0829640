"""``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs``: the API described from the code that serves it.

Request bodies are the pydantic models the handlers validate with (``http.bodies``, and
``WorkflowDefinition`` for workflows); response bodies are the ``TypedDict`` s of
``http.responses``, which the typed client returns. What no model holds (paths, methods, query
parameters and headers, statuses) is the route table below, one ``Operation`` per route; a test
checks that it names every route of both routers and no other, so a new route without an entry
fails the suite. Each app serves its own document: the execution API (8084) and the worker
registry (8085) are two servers, and both have a ``/healthz``.

Both documents and the docs page are open (no key), like the probes: they are the same for every
caller and every instance, hold no data, and say what the README and the source already say
(ADR 0024). The page is a packaged asset (``http/assets/docs.html``) that renders the document
in the browser with no script from elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from linkflow_stream.core.events import EventType
from linkflow_stream.core.idempotency import MAX_KEY_LENGTH
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionStatus
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.http import responses
from linkflow_stream.http.auth import is_open, role_for
from linkflow_stream.http.bodies import (
    LIST_LIMIT,
    LIST_VIEWS,
    LOGS_LIMIT,
    MAX_WAIT_SECONDS,
    SIGNAL_ID,
    BroadcastSignalBody,
    KeyCreateBody,
    PauseBody,
    RerunBody,
    RetryPolicyBody,
    ScheduleBody,
    ScheduleChange,
    StartExecutionBody,
    TimeoutBody,
    WorkerRegistration,
)
from linkflow_stream.http.ui import ASSET_ROUTE, SLASHED_ROUTE, UI_PAGES
from linkflow_stream.nodes.wait_event import SIGNAL_NAME
from projections.costs import GROUPS, PERIODS
from projections.logs import LEVELS

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
JSON = "application/json"

Where = Literal["path", "query", "header"]


@dataclass(frozen=True)
class Param:
    name: str
    where: Where
    schema: Mapping[str, Any]
    description: str
    required: bool = False

    def render(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": dict(self.schema),
        }


@dataclass(frozen=True)
class Operation:
    """One route: what it does, what it takes and what it answers."""

    method: str
    path: str
    summary: str
    tag: str
    ok: int = 200
    ok_body: Any = responses.Document
    """A ``TypedDict`` (or other type) of the success body; ``None`` for a body that is not JSON."""
    body: type[BaseModel] | None = None
    body_optional: bool = False
    """No body is the body's defaults (every field of the model has one)."""
    params: Sequence[Param] = ()
    also: Mapping[int, tuple[str, Any]] = field(default_factory=dict)
    """Other success statuses: status -> (description, body type)."""
    errors: Mapping[int, str] = field(default_factory=dict)
    """Statuses besides the ones every route of its kind has (400, 401, 403, 404), and why."""
    description: str = ""
    content_type: str = JSON


ID = Param("id", "path", {"type": "string"}, "The execution's, workflow's, schedule's, key's or worker's id.")
WAIT = Param(
    "wait",
    "query",
    {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
    "Seconds to wait for the run to end: 200 with the finished execution if it ends in time, else 202.",
)
PRIORITY = Param(
    "X-Priority", "header", {"type": "string", "enum": [p.value for p in Priority]}, "Default `normal`."
)
IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "Starts with the same key within 24 hours name one run: the repeat answers it, with "
    "`Idempotent-Replayed: true`, and starts nothing.",
)
TIME = {"type": "string", "format": "date-time"}


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


LIST_PARAMS = (
    Param(
        "status", "query", {"type": "string", "enum": [s.value for s in ExecutionStatus]}, "Only runs in it."
    ),
    Param("workflow_id", "query", {"type": "string"}, "Only runs of this workflow."),
    Param("team", "query", {"type": "string"}, "Only runs of this team (a key sees its own team only)."),
    Param("priority", "query", {"type": "string", "enum": [p.value for p in Priority]}, "Only runs of it."),
    Param("created_after", "query", TIME, "ISO-8601; a time without an offset is UTC."),
    Param("created_before", "query", TIME, "ISO-8601; a time without an offset is UTC."),
    Param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT, "default": 50},
        "Page size.",
    ),
    Param("cursor", "query", {"type": "string"}, "`next_cursor` of the page before."),
    Param(
        "view",
        "query",
        {"type": "string", "enum": list(LIST_VIEWS), "default": "full"},
        "`summary`: each run without its input, nodes and history (what a list shows; a few hundred "
        "bytes a run whatever its data).",
    ),
)
LOG_PARAMS = (
    Param("level", "query", {"type": "string", "enum": list(LEVELS), "default": "debug"}, "Lowest level."),
    Param("node_id", "query", {"type": "string"}, "Only lines of this node."),
    Param("q", "query", {"type": "string"}, "Only lines containing this text."),
    Param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": LOGS_LIMIT, "default": 1000},
        "Most lines.",
    ),
)
REPORT_PARAMS = (
    Param("period", "query", {"type": "string", "enum": list(PERIODS), "default": "month"}, "How far back."),
    Param("group_by", "query", {"type": "string", "enum": list(GROUPS), "default": "workflow"}, "Per what."),
)
TOO_MANY_QUEUED = (
    "The team is over its start rate (LINKFLOW_TEAM_STARTS_PER_SECOND) or has LINKFLOW_MAX_QUEUED_PER_TEAM "
    "runs queued; retry after `Retry-After` seconds."
)
SIGNAL_NAME_PARAM = Param(
    "name", "path", {"type": "string", "pattern": SIGNAL_NAME.pattern}, "The signal's name."
)
SIGNAL_IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "pattern": SIGNAL_ID},
    "The signal's id: the same id reaches a run once. Default: a new id.",
)
COMMAND_CONFLICT = {409: "The run already ended, or was accepted but has not started within 10 s."}
KEY_REUSED = "The Idempotency-Key was used within 24 hours for another start (another workflow or input)."

API_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/api/workflows",
        "Register a workflow (a new version if the id exists and the definition changed)",
        "workflows",
        ok=201,
        ok_body=responses.WorkflowRegistered,
        also={
            200: (
                "The same as the latest version: no version made (`unchanged`).",
                responses.WorkflowRegistered,
            )
        },
        body=WorkflowDefinition,
        errors={409: "The id belongs to another team's workflow."},
        description="Validated as a whole: ids, types, dependencies, cycles, per-type config, JSONata. "
        "`version` and `created_at` are set by the engine; `team` comes from the key.",
    ),
    Operation(
        "GET",
        "/api/workflows",
        "List the latest version of every workflow",
        "workflows",
        ok_body=responses.WorkflowList,
    ),
    Operation(
        "GET",
        "/api/workflows/{id}",
        "The latest version of a workflow (or the version asked for)",
        "workflows",
        params=(
            ID,
            Param(
                "version",
                "query",
                {"type": "integer", "minimum": 1},
                "This version, read back from the log (404 if the workflow never had it, or a version "
                "written before ADR 0048 was compacted away; 503 if the log cannot be read).",
            ),
        ),
    ),
    Operation(
        "GET",
        "/api/workflows/{id}/versions",
        "Every version of a workflow, newest first",
        "workflows",
        params=(ID,),
    ),
    Operation(
        "PUT",
        "/api/workflows/{id}/retry",
        "Set the workflow's default retry policy (a new version, unless the latest already has it)",
        "workflows",
        body=RetryPolicyBody,
        params=(ID,),
    ),
    Operation(
        "POST",
        "/api/workflows/{id}/webhook-token",
        "A new webhook token for the workflow (shown in this answer only); the old one stops working",
        "workflows",
        ok=201,
        ok_body=responses.WebhookToken,
        params=(ID,),
    ),
    Operation(
        "POST",
        "/webhook/{workflow_id}",
        "Start a run of the workflow with the JSON body as its input (webhook trigger)",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        params=(
            Param("workflow_id", "path", {"type": "string"}, "The workflow to run (its latest version)."),
            Param(
                "X-LinkFlow-Token",
                "header",
                {"type": "string"},
                "The workflow's webhook token (`webhook_token` of its registration).",
                required=True,
            ),
            WAIT,
            PRIORITY,
            IDEMPOTENCY,
        ),
        also={200: ("The run ended within `wait` (or a repeated Idempotency-Key).", responses.Execution)},
        errors={
            401: "Missing or wrong token, or no such workflow.",
            409: KEY_REUSED,
            429: TOO_MANY_QUEUED,
            503: "Kafka did not acknowledge the start; retry with the same Idempotency-Key.",
        },
        description="Needs no API key: the token authorises it. Any JSON body is the run's input.",
    ),
    Operation(
        "POST",
        "/api/executions/{id}/test-retry",
        "Dry run: per node, the governing policy, its schedule, whether its last error would be retried",
        "executions",
        params=(ID,),
    ),
    Operation(
        "POST",
        "/api/executions",
        "Start a run",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        body=StartExecutionBody,
        params=(WAIT, PRIORITY, IDEMPOTENCY),
        also={200: ("The run ended within `wait` (or a repeated Idempotency-Key).", responses.Execution)},
        errors={
            409: KEY_REUSED,
            429: TOO_MANY_QUEUED,
            503: "Kafka did not acknowledge the start; retry with the same Idempotency-Key.",
        },
        description="202 `{id, status}` (`pending`, or after a `wait` that ran out the run's status "
        "by then); with `wait`, 200 and the finished execution (`Execution`) if it ends within that "
        "many seconds. A repeated Idempotency-Key answers 200.",
    ),
    Operation(
        "GET",
        "/api/executions",
        "List runs, newest first",
        "executions",
        ok_body=responses.ExecutionPage | responses.ExecutionSummaryPage,
        params=LIST_PARAMS,
    ),
    Operation(
        "GET",
        "/api/executions/{id}",
        "A run: status, nodes, history (with as_of_seq, as it was after that event)",
        "executions",
        ok_body=responses.Execution,
        params=(
            ID,
            Param(
                "as_of_seq",
                "query",
                {"type": "integer", "minimum": 1},
                "Fold the run's events only up to this one (404 past its last event).",
            ),
        ),
    ),
    Operation(
        "GET",
        "/api/executions/{id}/events",
        "A run's events from linkflow.events, oldest first",
        "executions",
        params=(
            ID,
            Param(
                "type",
                "query",
                {"type": "string", "enum": [t.value for t in EventType]},
                "Only events of this type; node_started also matches an inline node's attempt, "
                "written as the one event that ends it (ADR 0056).",
            ),
        ),
    ),
    Operation(
        "POST",
        "/api/executions/{id}/cancel",
        "Cancel a run",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        params=(ID,),
        errors=COMMAND_CONFLICT,
    ),
    Operation(
        "POST",
        "/api/executions/{id}/rerun",
        "Run an ended run again, from its failed nodes (reusing what still holds) or from the start",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        body=RerunBody,
        body_optional=True,
        params=(ID, WAIT, PRIORITY, IDEMPOTENCY),
        also={200: ("The rerun ended within `wait`.", responses.Execution)},
        errors={409: "The run has not ended (or succeeded, with `from: failed`)."},
        description="The new run has `rerun_of`; the original lists it in `reruns`. Reused nodes "
        "succeed at once with the original's outputs and show `reused: true`.",
    ),
    Operation(
        "GET",
        "/api/executions/{id}/metrics",
        "Timings, attempts and resource use",
        "executions",
        params=(ID,),
    ),
    Operation(
        "PUT",
        "/api/executions/{id}/timeout",
        "Set the run's deadline, counted from its start",
        "executions",
        ok=202,
        body=TimeoutBody,
        params=(ID,),
        errors=COMMAND_CONFLICT,
    ),
    Operation(
        "POST",
        "/api/executions/{id}/recover",
        "Dispatch every task in flight again now",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        params=(ID,),
        errors={409: COMMAND_CONFLICT[409] + " Or the run is queued for a concurrency slot."},
    ),
    Operation(
        "POST",
        "/api/executions/{id}/pause",
        "Pause a run: nothing new is dispatched until it is resumed",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        body=PauseBody,
        body_optional=True,
        params=(ID,),
        errors={
            409: "The run ended or is already paused, is queued for a concurrency slot (nothing of it "
            "runs yet), or was accepted but has not started within 10 s."
        },
    ),
    Operation(
        "POST",
        "/api/executions/{id}/resume",
        "Resume a paused run; timers that came due while paused fire now",
        "executions",
        ok=202,
        ok_body=responses.Accepted,
        params=(ID,),
        errors={409: "The run already ended or is not paused."},
    ),
    Operation(
        "POST",
        "/api/executions/{id}/events/{name}",
        "Deliver a signal to a run (the JSON body is its payload)",
        "signals",
        ok=202,
        params=(ID, SIGNAL_NAME_PARAM, SIGNAL_IDEMPOTENCY),
        errors={
            409: COMMAND_CONFLICT[409] + " Or no `wait_event` node of the run's workflow waits on `name`."
        },
        description="The run keeps the signal until a `wait_event` node on `name` takes it (it may "
        "come before the node waits); the payload becomes that node's output. A repeated "
        "Idempotency-Key is the same signal: the run takes it once.",
    ),
    Operation(
        "POST",
        "/api/events/{name}",
        "Deliver a signal to every run waiting on name with a correlation key",
        "signals",
        ok=202,
        body=BroadcastSignalBody,
        params=(SIGNAL_NAME_PARAM, SIGNAL_IDEMPOTENCY),
        description="202 `{matched, execution_ids, signal_id}`: the runs of the caller's team whose "
        "`wait_event` node on `name` waits with this `correlation_key` now. A broadcast no run waits "
        "for reaches nobody and is not kept (`matched: 0`).",
    ),
    Operation(
        "POST",
        "/api/executions/{id}/checkpoint",
        "Through which event the run is durable",
        "executions",
        params=(ID,),
        errors={409: "The run has not started yet."},
    ),
    Operation(
        "GET",
        "/api/executions/{id}/logs",
        "A run's log lines, oldest first",
        "executions",
        ok_body=responses.LogPage,
        params=(ID, *LOG_PARAMS),
    ),
    Operation("GET", "/api/executions/{id}/cost", "What a run used and cost", "costs", params=(ID,)),
    Operation(
        "GET",
        "/api/costs/report",
        "Cost per workflow or team, with suggestions",
        "costs",
        params=REPORT_PARAMS,
    ),
    Operation(
        "GET",
        "/api/executions/{id}/logs/stream",
        "WebSocket: the lines so far, then each new one until the run ends",
        "executions",
        ok=101,
        ok_body=None,
        params=(ID,),
        content_type="",
    ),
    Operation(
        "GET",
        "/api/executions/{id}/watch",
        "WebSocket: the run's body now, then again each time it changes, until it ends",
        "executions",
        ok=101,
        ok_body=None,
        params=(ID,),
        content_type="",
        description="Each message is the `GET /api/executions/{id}` body. Changes faster than the "
        "client reads are coalesced into the latest body. A browser sends its key as the "
        "subprotocol `bearer.<key>` beside `linkflow` (it cannot set Authorization on a WebSocket). "
        "An upgrade whose Origin names another site is refused (403).",
    ),
    Operation(
        "GET",
        "/api/workers/status",
        "Every worker: roles, pools, slots, slots in use, health (the registry's, read-only here)",
        "workers",
    ),
    *(
        Operation(
            "GET",
            path,
            "The web UI (one page app; the path names the view)",
            "ui",
            ok_body=None,
            params=(ID,) if "{id}" in path else (),
            content_type="text/html",
        )
        for path in UI_PAGES
    ),
    Operation(
        "GET",
        ASSET_ROUTE,
        "A file of the web UI (scripts, styles, the DAG layout library)",
        "ui",
        ok_body=None,
        params=(Param("name", "path", {"type": "string"}, "The asset's file name."),),
        content_type="text/plain",
    ),
    Operation("GET", "/", "Redirects to the web UI", "ui", ok=302, ok_body=None, content_type=""),
    Operation("GET", "/ui", "Redirects to the web UI", "ui", ok=301, ok_body=None, content_type=""),
    Operation(
        "GET",
        SLASHED_ROUTE.replace(":.+", ""),
        "Redirects a page's address typed with a trailing slash to the page",
        "ui",
        ok=301,
        ok_body=None,
        params=(Param("page", "path", {"type": "string"}, "The page's path under /ui/."),),
        content_type="",
    ),
    Operation("GET", "/api/admin/queue/status", "Queued and running runs per priority, and the lag", "admin"),
    Operation(
        "GET",
        "/api/admin/circuits",
        "Circuit breakers per HTTP origin and database connection: state, failures, when opened",
        "admin",
        ok_body=responses.CircuitList,
    ),
    Operation("GET", "/api/keys", "List API keys (never their secrets)", "admin"),
    Operation(
        "POST",
        "/api/keys",
        "Create an API key (shown in this answer only)",
        "admin",
        ok=201,
        body=KeyCreateBody,
    ),
    Operation("POST", "/api/keys/{id}/revoke", "Revoke an API key", "admin", params=(ID,)),
    Operation(
        "POST",
        "/api/schedules",
        "Create a schedule: a workflow that runs by itself on a cron or every N seconds",
        "schedules",
        ok=201,
        body=ScheduleBody,
        errors={409: "A schedule with this id exists."},
        description="Each slot fires once across restarts and takeovers; its run's id is "
        "`sched-<schedule id>-<slot, UTC>Z` and its body has `schedule_id`. The answer adds "
        "`next_slot`, `last_slot`, `last_execution_id`, `fired` and `skipped`.",
    ),
    Operation("GET", "/api/schedules", "List schedules (a key sees its team's)", "schedules"),
    Operation(
        "GET",
        "/api/schedules/{id}",
        "A schedule, with its next slot and what it fired",
        "schedules",
        params=(ID,),
    ),
    Operation(
        "PATCH",
        "/api/schedules/{id}",
        "Pause, resume or change a schedule",
        "schedules",
        body=ScheduleChange,
        params=(ID,),
    ),
    Operation(
        "DELETE", "/api/schedules/{id}", "Delete a schedule (its runs stay)", "schedules", params=(ID,)
    ),
    Operation("GET", "/healthz", "The process is up", "probes", ok_body=responses.Health),
    Operation(
        "GET",
        "/readyz",
        "Broker connected, partitions assigned, views caught up, store writable, sends accepted",
        "probes",
        ok_body=responses.Readiness,
        errors={503: "Not ready; `checks` says what is missing."},
    ),
    Operation("GET", "/metrics", "Prometheus metrics", "probes", ok_body=None, content_type="text/plain"),
)

ENGINE_RECORD = "The id is a running engine process's own record (it registers itself every heartbeat)."

REGISTRY_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/api/workers/register",
        "Register a worker",
        "workers",
        ok=201,
        ok_body=responses.Accepted,
        body=WorkerRegistration,
        errors={409: ENGINE_RECORD},
    ),
    Operation(
        "POST",
        "/api/workers/{id}/heartbeat",
        "A worker's heartbeat",
        "workers",
        ok_body=responses.Accepted,
        params=(ID,),
        errors={409: ENGINE_RECORD},
    ),
    Operation(
        "POST",
        "/api/workers/{id}/deregister",
        "Deregister a worker",
        "workers",
        ok=202,
        ok_body=responses.Accepted,
        params=(ID,),
        errors={409: ENGINE_RECORD},
    ),
    Operation(
        "GET", "/api/workers/status", "Every worker: roles, pools, slots, slots in use, health", "workers"
    ),
    Operation("GET", "/healthz", "The process is up", "probes", ok_body=responses.Health),
)

DOCUMENT_OPERATIONS = (
    Operation("GET", "/openapi.json", "This document (OpenAPI 3.1)", "docs"),
    Operation(
        "GET", "/docs", "A page that renders this document", "docs", ok_body=None, content_type="text/html"
    ),
)
"""Served by both apps (``document_routes``)."""


def _schema_of(kind: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a ``TypedDict`` or type, its named parts put into ``defs``."""
    schema = TypeAdapter(kind).json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    title = schema.get("title")
    if isinstance(title, str) and getattr(kind, "__name__", None) == title:
        defs[title] = schema
        return {"$ref": REF.format(model=title)}
    return schema


def _request_schemas(operations: Sequence[Operation]) -> dict[str, Any]:
    """Each body model's validation schema by name. ``version`` and ``created_at`` of a workflow
    are the engine's to set (``parse_workflow`` overrides them), so its request schema leaves them out."""
    models = sorted({op.body for op in operations if op.body is not None}, key=lambda m: m.__name__)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    defs: dict[str, Any] = dict(top.get("$defs", {}))
    workflow = defs.get(WorkflowDefinition.__name__)
    if workflow is not None:
        for server_set in ("version", "created_at"):
            workflow["properties"].pop(server_set, None)
        workflow["required"] = [r for r in workflow.get("required", []) if r not in ("version", "created_at")]
    return defs


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }


def _operation(op: Operation, role: str | None, defs: dict[str, Any]) -> dict[str, Any]:
    words = {
        101: "Switching to WebSocket",
        200: "OK",
        201: "Created",
        202: "Accepted",
        301: "Moved Permanently",
        302: "Found",
    }
    answers: dict[str, Any] = {}
    for status, (description, kind) in {op.ok: (words[op.ok], op.ok_body), **op.also}.items():
        ok: dict[str, Any] = {"description": description}
        if op.content_type == JSON:
            ok["content"] = {JSON: {"schema": _schema_of(kind, defs)}}
        elif op.content_type:
            ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
        answers[str(status)] = ok
    if op.body is not None or any(p.where != "path" for p in op.params):
        answers["400"] = _error_response("The body or a parameter is invalid; the message names the field.")
    if role is not None:
        answers["401"] = _error_response("No key, or one that is unknown or revoked (when keys are on).")
        answers["403"] = _error_response(f"The key's role is below {role}.")
    if any(p.where == "path" for p in op.params):
        answers["404"] = _error_response("No such id (or another team's).")
    for status, why in op.errors.items():
        answers[str(status)] = _error_response(why)
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": answers,
    }
    if op.description or role:
        needs = f"Needs a key with role `{role}` when keys are on." if role else ""
        out["description"] = " ".join(part for part in (op.description, needs) if part)
    if op.params:
        out["parameters"] = [p.render() for p in op.params]
    if op.body is not None:
        out["requestBody"] = {
            "required": not op.body_optional,
            "content": {JSON: {"schema": {"$ref": REF.format(model=op.body.__name__)}}},
        }
    if role is None:
        out["security"] = []
    return out


def _operation_id(op: Operation) -> str:
    words = [
        w.strip("{}").replace("-", "_").replace(".", "_") for w in op.path.split("/") if w and w != "api"
    ]
    if op.ok in (301, 302) and op.path != "/":  # a redirect beside the page it names (/ui, /ui/)
        words.append("redirect")
    return "_".join([op.method.lower(), *words])


def role_needed(method: str, path: str, admin_routes: Collection[tuple[str, str]]) -> str | None:
    """The role ``http.auth`` asks of a request to this route (``None``: open)."""
    return None if is_open(path) else role_for(method, path, admin_routes).value


def document(
    title: str,
    operations: Sequence[Operation],
    admin_routes: Collection[tuple[str, str]],
    *,
    description: str = "",
    version: str = "0.1.0",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one app."""
    everything = [*operations, *DOCUMENT_OPERATIONS]
    defs = _request_schemas(everything)
    _schema_of(responses.ErrorBody, defs)  # every error response refers to it
    paths: dict[str, dict[str, Any]] = {}
    for op in everything:
        role = role_needed(op.method, op.path, admin_routes)
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, role, defs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(defs.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key made with `linkflow keys create` (`lfk_...`). Off on "
                    "loopback by default; see docs/security.md.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


def api_document(admin_routes: Collection[tuple[str, str]]) -> dict[str, Any]:
    return document(
        "LinkFlow Stream execution API",
        API_OPERATIONS,
        admin_routes,
        description="Workflows, executions, logs, costs and keys (port 8084). Every error is "
        '`{"error": {"type", "message"}}` with a 4xx status.',
    )


def registry_document(admin_routes: Collection[tuple[str, str]]) -> dict[str, Any]:
    return document(
        "LinkFlow Stream worker registry",
        REGISTRY_OPERATIONS,
        admin_routes,
        description="Workers register, heartbeat and deregister (port 8085).",
    )


def docs_page() -> bytes:
    """The packaged docs page (no script or style from anywhere else)."""
    return resources.files("linkflow_stream.http").joinpath("assets/docs.html").read_bytes()


PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page may run its own inline script and fetch this server's document, nothing else."""


def document_routes(doc: Mapping[str, Any]) -> list[web.RouteDef]:
    """``GET /openapi.json`` and ``GET /docs`` for an app, serving ``doc`` (built once)."""
    body = json.dumps(doc, indent=1).encode()
    page = docs_page()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": PAGE_POLICY},
        )

    return [web.get("/openapi.json", openapi_json), web.get("/docs", docs)]
