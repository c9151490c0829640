"""The execution API on port 8084: the seed's HTTP contract over the engine's topics and views.

Writes become Kafka records (acknowledged before the response); reads come from the read model
(live runs in memory, every run in the store), which every instance folds from the whole log, so
any instance answers any read.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Middleware

from linkflow_stream.core import topic_names
from linkflow_stream.core.admission import Admission, TooManyRequestsError
from linkflow_stream.core.auth import ApiKey, Principal, Role, new_key, new_webhook_token
from linkflow_stream.core.clock import iso, now, to_millis
from linkflow_stream.core.errors import ConflictError, LinkflowError, NotFoundError, ValidationError
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.execution_ids import new_execution_id
from linkflow_stream.core.idempotency import check_key, execution_ids, same_start, still_named
from linkflow_stream.core.inline_attempts import matches_type
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, Priority, Signal, StartExecution
from linkflow_stream.core.node_contract import RETRYABLE_CLASSES, NodeExecutor, retry_on_problems
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.rerun import reusable_outputs
from linkflow_stream.core.run_links import referenced_workflows
from linkflow_stream.core.schedule import Schedule
from linkflow_stream.core.signals import key_text, signal_names
from linkflow_stream.core.state import EvolveError, ExecutionState, ExecutionStatus, apply
from linkflow_stream.core.strict_json import loads
from linkflow_stream.core.trace_context import TRACEPARENT, TraceParent
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import WorkflowDefinition, same_definition
from linkflow_stream.http.auth import WS_PROTOCOL, authentication, principal_of
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
    validated,
)
from linkflow_stream.http.errors import UnauthorizedError, UnavailableError, acknowledged, errors_as_json
from linkflow_stream.http.openapi import api_document, document_routes
from linkflow_stream.http.start_limit import TeamStartLimiter
from linkflow_stream.http.ui import ui_routes
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.records import limit_of
from linkflow_stream.keys import KEY_CREATED, KEY_REVOKED, key_record
from linkflow_stream.nodes.wait_event import SIGNAL_NAME
from linkflow_stream.runtime.signals import broadcast_targets, signal_command
from linkflow_stream.tracing import Tracing, sending, traceparent_of
from projections.costs import GROUPS, PERIODS, cost_of
from projections.keys import KeyView
from projections.logs import LEVELS, FollowQueue, TooSlow
from projections.read_model import ReadModel
from projections.schedules import ScheduleView
from projections.status import render, render_metrics
from projections.store import Cursor, ExecutionQuery
from projections.workflows import WorkflowView, version_key

log = logging.getLogger(__name__)

SYNC_SECONDS = 2.0
START_WAIT_SECONDS = 10.0
"""Longest a command to a run accepted a moment ago waits for the run to start. A command is sent
only once its run's start is decided: starts and commands travel on different topics, and a
command decided before its run's start would find no run and be dropped."""
"""Longest a read waits for the views to catch up before it answers 404."""
MAX_BODY_BYTES = 1024 * 1024
SLOW_READER_MESSAGE = b"too slow: lines were waiting unread; reconnect to read the backlog again"
EXECUTION_STATUSES = ("pending", "queued", "running", "success", "failed", "cancelled", "paused")
PRIORITIES = tuple(p.value for p in Priority)
TERMINAL_STATUSES = ("success", "failed", "cancelled")


async def _value(found: Any) -> Any:
    return await found if inspect.isawaitable(found) else found


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class ApiDeps:
    publisher: Publisher
    views: ReadModel
    workflows: WorkflowView
    registry: Mapping[str, NodeExecutor]
    readiness: Callable[[], Mapping[str, bool]]
    sync: Callable[[float], Awaitable[bool]] | None = None
    queue_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    metrics: Callable[[], bytes] | None = None
    pools: Callable[[], Awaitable[Collection[str]]] | None = None
    """The task pools that exist; registration refuses a task node naming another."""
    keys: KeyView | None = None
    """Every API key (for ``/api/keys``); ``None`` where keys are not managed here."""
    auth: Middleware | None = None
    """The authentication middleware (``http.auth.authentication``); default: auth disabled."""
    tracing: Tracing | None = None
    """Makes the send span of each start request; ``None``: tracing is off."""
    schedules: ScheduleView | None = None
    """Every schedule (``/api/schedules``); ``None`` where schedules are not kept."""
    circuits: Callable[[], list[dict[str, Any]]] | None = None
    """Every circuit breaker this instance knows (``runtime.breakers.Breakers.listing``)."""
    start_limit: TeamStartLimiter | None = None
    """Each team's start rate limit (``LINKFLOW_TEAM_STARTS_PER_SECOND``); ``None``: no limit."""
    events: Callable[[str, datetime | None], Awaitable[list[ExecutionEvent]]] | None = None
    """One run's events from ``linkflow.events`` in log order, given its id and when it was
    created (``kafka.execution_log.execution_events``); ``None`` where the log is not read."""
    admission: Admission | None = None
    """Admission control of starts (``LINKFLOW_MAX_QUEUED_PER_TEAM``); ``None``: no limit."""
    on_admission_rejected: Callable[[str], None] | None = None
    """Called with the team label of each start refused with 429 (the metric)."""
    workers: Callable[[], dict[str, Any]] | None = None
    """The worker registry's ``/api/workers/status`` body, read-only here so the UI (served on
    this port) needs no cross-origin call to 8085; ``None`` where workers are not known."""


WEBHOOK_TOKEN_HEADER = "X-LinkFlow-Token"  # noqa: S105 - a header name, not a secret

QUEUED_IGNORES = {CommandKind.PAUSE: "pause", CommandKind.RECOVER: "recover"}
"""Commands the decider ignores for a queued run (it holds nothing of it yet): a 409, not a 202."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have. Deeper documents are refused before they
reach code that recurses over them (the codec, JSONata, pydantic), where they would exhaust the
stack and surface as a 500."""


def _takes_signal(state: ExecutionState, name: str) -> None:
    """409 when the run's workflow has no ``wait_event`` node on ``name``: the run would keep the
    signal for ever, and the caller would never learn that it went nowhere (a typo in the name,
    say)."""
    names = signal_names(state.workflow)
    if name not in names:
        waits = f"its wait_event nodes wait on {', '.join(map(repr, names))}" if names else "it has none"
        raise ConflictError(
            f"no wait_event node of workflow {state.workflow.id!r} waits on signal {name!r} ({waits})"
        )


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests deeper than ``MAX_JSON_DEPTH`` (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _signal_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not SIGNAL_NAME.match(name):
        raise ValidationError(f"signal name {name!r} must match {SIGNAL_NAME.pattern}")
    return name


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise ValidationError("the request body must be JSON; it was empty")
    try:
        body = loads(raw)
    except RecursionError:
        body = None
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"malformed JSON: {exc}") from exc
    else:  # counting brackets first spares the walk for every body that could not be too deep
        deep = raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _too_deep(body)
    if deep:
        raise ValidationError(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    if SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise ValidationError(
            "the JSON body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): not text"
        )
    return body


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""JSON may escape half of a surrogate pair alone; Python decodes it to a string no UTF-8 encoder
accepts, which would fail later (Avro, the store) as a 500. Only bodies with such an escape are
walked."""


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _owned_by(principal: Principal, body: Any) -> Any:
    """A workflow body with the team of the caller's key (with auth on, the key decides; a body
    naming another team is refused rather than quietly moved)."""
    if principal.team is None or not isinstance(body, dict):
        return body
    given = body.get("team")
    if given is not None and given != principal.team:
        raise ValidationError(
            f"team comes from your API key ({principal.team}); leave it out or give {principal.team!r}"
        )
    return {**body, "team": principal.team}


def _priority(request: web.Request) -> Priority:
    raw = request.headers.get("X-Priority")
    if raw is None or raw.strip() == "":
        return Priority.NORMAL
    try:
        return Priority(raw.strip().lower())
    except ValueError:
        raise ValidationError(f"X-Priority must be high, normal or low, not {raw!r}") from None


def _start_params(request: web.Request) -> tuple[Priority, float | None]:
    """A start's ``X-Priority`` and ``?wait``; every start route reads them before any look-up,
    so a bad one is a 400 whether or not the workflow or run exists."""
    return _priority(request), _float_param(request, "wait", low=0, high=MAX_WAIT_SECONDS)


def _float_param(request: web.Request, name: str, *, low: float, high: float) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}")
    return value


def _int_param(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ValidationError(f"{name} must be an integer between {low} and {high}")
    return int(raw)


EVENT_TYPES = tuple(t.value for t in EventType)


def _as_of_seq(request: web.Request) -> int | None:
    """``?as_of_seq=N``: an event number, 1 or more (``None`` when not asked)."""
    raw = request.query.get("as_of_seq")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise ValidationError(f"as_of_seq must be an event number (an integer, 1 or more), not {raw[:40]!r}")
    return int(raw)


def _time_param(request: web.Request, name: str) -> int | None:
    """An ISO-8601 time (``Z`` or an offset; a time without one is UTC) as epoch ms."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name} must be an ISO-8601 time such as 2026-12-01T09:30:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return to_millis(when)


async def _relay(queue: FollowQueue, ws: web.WebSocketResponse, after: tuple[int, int]) -> None:
    """Send queued lines (those after ``after``, the last one already sent) until the execution
    ends (``None``) or the client goes away."""
    closed = asyncio.ensure_future(ws.receive())  # a client sends nothing; any message here is its close
    try:
        while True:
            nxt = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({nxt, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                nxt.cancel()
                return
            item = nxt.result()
            if item is None:
                return
            if item is TooSlow.TOO_SLOW:
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=SLOW_READER_MESSAGE)
                return
            seq, n, line = item
            if (seq, n) > after:
                await ws.send_json(line)
    finally:
        closed.cancel()


class Api:
    def __init__(self, deps: ApiDeps) -> None:
        self.d = deps

    ADMIN_ROUTES = (
        ("GET", "/api/admin/queue/status"),
        ("GET", "/api/admin/circuits"),
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("POST", "/api/keys/{id}/revoke"),
        ("GET", "/api/workers/status"),  # workers are an admin's (docs/security.md); 8085 says the same
    )
    """Routes only an admin may call; other reads need a viewer, other writes an operator."""

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[errors_as_json, self.d.auth or authentication(None)], client_max_size=MAX_BODY_BYTES
        )
        app.add_routes(
            [
                web.post("/api/workflows", self.register_workflow),
                web.get("/api/workflows", self.list_workflows),
                web.get("/api/workflows/{id}", self.get_workflow),
                web.get("/api/workflows/{id}/versions", self.workflow_versions),
                web.put("/api/workflows/{id}/retry", self.set_workflow_retry),
                web.post("/api/workflows/{id}/webhook-token", self.rotate_webhook_token),
                web.post("/webhook/{workflow_id}", self.webhook),
                web.post("/api/executions/{id}/test-retry", self.test_retry),
                web.post("/api/executions", self.start_execution),
                web.get("/api/executions", self.list_executions),
                web.get("/api/executions/{id}", self.get_execution),
                web.get("/api/executions/{id}/events", self.execution_events),
                web.post("/api/executions/{id}/cancel", self.cancel_execution),
                web.post("/api/executions/{id}/rerun", self.rerun),
                web.get("/api/executions/{id}/metrics", self.execution_metrics),
                web.put("/api/executions/{id}/timeout", self.set_timeout),
                web.post("/api/executions/{id}/recover", self.recover),
                web.post("/api/executions/{id}/pause", self.pause_execution),
                web.post("/api/executions/{id}/resume", self.resume_execution),
                web.post("/api/executions/{id}/checkpoint", self.checkpoint),
                web.get("/api/executions/{id}/logs", self.get_logs),
                web.get("/api/executions/{id}/cost", self.execution_cost),
                web.get("/api/costs/report", self.cost_report),
                web.get("/api/executions/{id}/logs/stream", self.stream_logs),
                web.get("/api/executions/{id}/watch", self.watch_execution),
                web.get("/api/workers/status", self.workers_status),
                web.get("/api/admin/queue/status", self.get_queue_status),
                web.get("/api/admin/circuits", self.get_circuits),
                web.get("/api/keys", self.list_keys),
                web.post("/api/keys", self.create_key),
                web.post("/api/keys/{id}/revoke", self.revoke_key),
                web.post("/api/schedules", self.create_schedule),
                web.get("/api/schedules", self.list_schedules),
                web.get("/api/schedules/{id}", self.get_schedule),
                web.patch("/api/schedules/{id}", self.change_schedule),
                web.delete("/api/schedules/{id}", self.delete_schedule),
                web.post("/api/executions/{id}/events/{name}", self.signal_execution),
                web.post("/api/events/{name}", self.broadcast_signal),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                *document_routes(api_document(self.ADMIN_ROUTES)),
                *ui_routes(),
            ]
        )
        return app

    async def register_workflow(self, request: web.Request) -> web.Response:
        """A new workflow, or a new version of one of the caller's team; its team is the key's.
        A definition the same as the latest version makes none (200 ``unchanged``): applying a
        file on every deploy does not pile up versions, each kept for ever (ADR 0048)."""
        body = _owned_by(principal_of(request), await _json_body(request))
        workflow_id = body.get("id") if isinstance(body, dict) else None
        caught_up = False
        if isinstance(workflow_id, str):
            await self._claimable(principal_of(request), workflow_id)
            if self.d.workflows.get(workflow_id) is not None:
                caught_up = await self._caught_up()  # the latest version of any instance, not only ours
        version = self.d.workflows.next_version(workflow_id) if isinstance(workflow_id, str) else 1
        pools = await self.d.pools() if self.d.pools is not None else None
        wf = parse_workflow(body, self.d.registry, version=version, created_at=now(), pools=pools)
        await self._check_referenced(principal_of(request), wf)
        latest = self.d.workflows.get(wf.id)
        if latest is not None and caught_up and same_definition(latest, wf):  # applied again: nothing new
            return web.json_response({"id": wf.id, "version": latest.version, "unchanged": True})
        if latest is not None and latest.version >= wf.version:  # another version came in meanwhile
            wf = wf.model_copy(update={"version": latest.version + 1})
        token = await self._new_webhook_token(wf) if wf.version == 1 else None
        await self._publish_workflow(wf)
        answer: dict[str, Any] = {"id": wf.id, "version": wf.version}
        if token is not None:
            answer["webhook_token"] = token
        return web.json_response(answer, status=201)

    async def _caught_up(self) -> bool:
        """Whether the views now hold everything the log held a moment ago. Not knowing (a sync
        that timed out or failed) is ``False``: the caller then does what is safe without it."""
        if self.d.sync is None:
            return False
        try:
            return await self.d.sync(SYNC_SECONDS)
        except Exception as exc:  # noqa: BLE001 - whatever the reason, the answer is "not known"
            log.warning("views could not catch up with the log: %r", exc)
            return False

    async def _check_referenced(self, principal: Principal, wf: WorkflowDefinition) -> None:
        """400 unless every workflow ``wf`` starts (its error workflow, its children) is
        registered, in the version named, and owned by the caller's team (ADR 0036)."""
        problems = []
        for where, workflow_id, version in referenced_workflows(wf):
            found: WorkflowDefinition | None = await self._synced(partial(self.d.workflows.get, workflow_id))
            if found is None or not principal.sees(found.team):
                problems.append(f"{where}: no workflow {workflow_id!r} is registered")
            elif version is not None and version > found.version:
                problems.append(f"{where}: workflow {workflow_id!r} has no version {version}")
        if problems:
            raise ValidationError("invalid workflow: " + "; ".join(problems))

    async def _new_webhook_token(self, wf: WorkflowDefinition) -> str:
        """A new webhook token of ``wf``, stored (as a hash) before it is handed out, the earlier
        ones revoked: only the newest token of a workflow starts it."""
        keys = self._keys()
        # without keys a workflow has no team; the token's record needs one, and nothing reads it
        # (a run's team is its workflow's)
        token, record = new_webhook_token(wf.id, wf.team or "default", now())
        await self._acknowledged(key_record(record, KEY_CREATED), f"the webhook token of {wf.id}")
        keys.apply(record)
        for old in keys.webhook_tokens(wf.id):
            if old.id != record.id:
                revoked = old.model_copy(update={"revoked_at": record.created_at})
                await self._acknowledged(key_record(revoked, KEY_REVOKED), f"revocation of token {old.id}")
                keys.apply(revoked)
        return token

    async def rotate_webhook_token(self, request: web.Request) -> web.Response:
        """A new webhook token for a workflow of the caller's team; the old one stops working."""
        wf = await self._workflow(request, request.match_info["id"])
        return web.json_response(
            {"id": wf.id, "webhook_token": await self._new_webhook_token(wf)}, status=201
        )

    async def webhook(self, request: web.Request) -> web.Response:
        """``POST /webhook/{workflow_id}``: start a run with the JSON body as its input, authorised
        by the workflow's token in ``X-LinkFlow-Token`` instead of an API key. An unknown workflow
        gets the same 401 as a wrong token, so the route tells nothing about which ids exist."""
        workflow_id = request.match_info["workflow_id"]
        token = request.headers.get(WEBHOOK_TOKEN_HEADER, "")
        keys = self._keys()
        if not token or await self._synced(lambda: keys.check_webhook(workflow_id, token)) is None:
            raise UnauthorizedError(
                f"a webhook needs the workflow's token in {WEBHOOK_TOKEN_HEADER} (returned once as "
                "`webhook_token` when the workflow was registered; a new one from "
                "POST /api/workflows/{id}/webhook-token)"
            )
        wf = await self._synced(lambda: self.d.workflows.get(workflow_id))
        if wf is None:
            raise UnauthorizedError(f"no workflow {workflow_id!r} with that webhook token")
        return await self._start(request, wf, await _json_body(request))

    async def _publish_workflow(self, wf: WorkflowDefinition) -> None:
        """Put a version on the log, then into this instance's view, so a read right after finds it."""
        await self._acknowledged(
            Outgoing(
                topic_names.WORKFLOWS,
                version_key(wf.id, wf.version),
                wf,
                "io.linkflow.workflow.registered",
                time=wf.created_at,
            ),
            f"workflow {wf.id} version {wf.version}",
        )
        self.d.workflows.apply(wf)

    async def _acknowledged(
        self, item: Outgoing | list[Outgoing], what: str, hint: str = "try again"
    ) -> None:
        """Send records; not acknowledged within ``ACK_SECONDS``, a 503 the client may retry (the
        send goes on, so the record may still land, as the 503 says)."""
        publisher = self.d.publisher
        await acknowledged(
            publisher.send(item if isinstance(item, list) else [item]), what, hint, overdue=publisher.overdue
        )

    async def _claimable(self, principal: Principal, workflow_id: str) -> None:
        """A workflow id of another team is not the caller's to version (409, not 404: the id is
        taken either way, and saying so names no team and shows nothing of it)."""
        existing = await self._synced(lambda: self.d.workflows.get(workflow_id))
        if existing is not None and principal.team is not None and existing.team != principal.team:
            raise ConflictError(f"workflow id {workflow_id!r} is in use by another team; choose another id")

    async def list_workflows(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        return web.json_response(
            {
                "workflows": [
                    {"id": wf.id, "version": wf.version, "name": wf.name, "team": wf.team}
                    for wf in self.d.workflows.latest.values()
                    if principal.sees(wf.team)
                ]
            }
        )

    async def _workflow(self, request: web.Request, workflow_id: str) -> WorkflowDefinition:
        """The latest version of a workflow the caller's team owns (404 otherwise)."""
        principal = principal_of(request)

        def owned() -> WorkflowDefinition | None:
            wf = self.d.workflows.get(workflow_id)
            return wf if wf is not None and principal.sees(wf.team) else None

        # another team's workflow takes the same path as a missing one (a sync, then 404): no
        # quicker answer tells that the id exists
        found: WorkflowDefinition | None = await self._synced(owned)
        if found is None:
            raise NotFoundError(f"workflow {workflow_id!r} does not exist")
        return found

    async def _started(
        self, request: web.Request, execution_id: str, not_started: LinkflowError
    ) -> ExecutionState:
        """The state of a run of the caller's team that has started; 404 if it does not exist
        (or is another team's), ``not_started`` if it was accepted but has no events yet."""
        principal = principal_of(request)

        async def owned() -> ExecutionState | None:
            state = await self.d.views.state(execution_id)
            return state if state is not None and principal.sees(state.workflow.team) else None

        state: ExecutionState | None = await self._synced(owned)
        if state is None:
            body = await self._visible(request, execution_id)
            if ExecutionStatus(body["status"]).terminal:  # ended without starting
                raise ConflictError(
                    f"execution {execution_id} never started: {body['history'][-1]['reason']}"
                )
            raise not_started
        return state

    async def _visible(self, request: web.Request, execution_id: str) -> dict[str, Any]:
        """The body of a run of the caller's team (404 if there is none)."""
        principal = principal_of(request)

        async def owned() -> dict[str, Any] | None:
            body = await self.d.views.body(execution_id)
            return body if body is not None and principal.sees(body.get("team")) else None

        # another team's run takes the same path as a missing one (a sync, then 404)
        found: dict[str, Any] | None = await self._synced(owned)
        if found is None:
            raise NotFoundError(f"execution {execution_id!r} does not exist")
        return found

    async def _synced(self, found: Callable[[], Any]) -> Any:
        """``found()`` (a value or an awaitable), and if it finds nothing, again once the views
        hold everything acknowledged so far (another instance may have accepted it a moment ago)."""
        value = await _value(found())
        if value is None and self.d.sync is not None:
            await self.d.sync(SYNC_SECONDS)
            value = await _value(found())
        return value

    async def get_workflow(self, request: web.Request) -> web.Response:
        """The latest version, or with ``?version=N`` that one, read back from the log (404 if the
        workflow never had it)."""
        wf = await self._workflow(request, request.match_info["id"])
        wanted = request.query.get("version")
        if wanted is not None:
            version = _int_param(request, "version", 1, low=1, high=2**31 - 1)
            found = await self._synced(partial(self.d.workflows.version, wf.id, version))
            if found is None:
                raise NotFoundError(f"workflow {wf.id!r} has no version {wanted}")
            wf = found
        return web.json_response(json.loads(wf.model_dump_json()))

    async def workflow_versions(self, request: web.Request) -> web.Response:
        """Every version of a workflow, newest first (each is a record of its own on the log,
        ADR 0048)."""
        wf = await self._workflow(request, request.match_info["id"])
        rows = [
            {"version": v.version, "created_at": iso(v.created_at), "nodes": v.nodes, "name": v.name}
            for v in self.d.workflows.versions_of(wf.id)
        ]
        return web.json_response({"id": wf.id, "latest": wf.version, "versions": rows})

    async def set_workflow_retry(self, request: web.Request) -> web.Response:
        """``{"strategy": "exponential"|"fixed"|"none", "max_attempts", ...}``: a new version whose
        nodes without their own policy retry retryable failures like this. The policy the latest
        version already has makes none (``"unchanged": true``), as re-registering does: a script
        that sets it on every deploy does not pile up versions, each kept for ever (ADR 0048)."""
        workflow_id = request.match_info["id"]
        current = await self._workflow(request, workflow_id)
        policy = validated(RetryPolicyBody, await _json_body(request)).policy()
        wrong = retry_on_problems(policy.retry_on)
        if wrong:
            raise ValidationError("invalid request body: " + "; ".join(wrong))
        if await self._caught_up():  # the latest version of any instance, not only ours
            current = self.d.workflows.get(workflow_id) or current
            unchanged = current.retry == policy
        else:
            unchanged = False  # not known to be the latest: a new version is what is safe
        if not unchanged:
            current = current.model_copy(
                update={
                    "version": max(self.d.workflows.next_version(workflow_id), current.version + 1),
                    "retry": policy,
                    "created_at": now(),
                }
            )
            await self._publish_workflow(current)
        answer: dict[str, Any] = {
            "id": current.id,
            "version": current.version,
            "retry": policy.model_dump(),
            "schedule_seconds": policy.schedule(),
        }
        if unchanged:
            answer["unchanged"] = True
        return web.json_response(answer)

    async def test_retry(self, request: web.Request) -> web.Response:
        """A dry run: for each node, which policy governs it, its retry schedule, and whether its
        latest error would be retried. Nothing is sent."""
        execution_id = request.match_info["id"]
        state = await self._started(
            request, execution_id, NotFoundError(f"execution {execution_id!r} has not started yet")
        )
        nodes = {}
        for node in state.workflow.nodes:
            ns = state.nodes[node.id]
            policy = state.workflow.retry_policy(node)
            error = ns.error
            nodes[node.id] = {
                "status": ns.status.value,
                "attempts": ns.attempts,
                "policy": policy.model_dump() if policy else None,
                "policy_source": "node" if node.retry else ("workflow" if policy else None),
                "schedule_seconds": policy.schedule() if policy else [],
                "last_error": error.model_dump() if error else None,
                "would_retry": bool(
                    error and policy and policy.would_retry(error.error_class, error.retryable, ns.attempts)
                ),
            }
        return web.json_response(
            {
                "id": execution_id,
                "workflow_version": state.workflow.version,
                "retryable_classes": sorted(k for k, v in RETRYABLE_CLASSES.items() if v),
                "nodes": nodes,
            }
        )

    async def start_execution(self, request: web.Request) -> web.Response:
        _start_params(request)
        body = validated(StartExecutionBody, await _json_body(request))
        wf = await self._workflow(request, body.workflow_id)
        return await self._start(request, wf, body.input_data)

    async def _start(
        self,
        request: web.Request,
        wf: WorkflowDefinition,
        input_data: Any,
        *,
        links: dict[str, str] | None = None,
        reused: dict[str, Any] | None = None,
    ) -> web.Response:
        """Start a run of ``wf`` with ``input_data``, honouring the request's ``X-Priority``,
        ``Idempotency-Key``, ``traceparent`` and ``?wait``; ``links`` and ``reused`` as on
        ``StartExecution``."""
        priority, wait = _start_params(request)
        requested_at = now()
        key = request.headers.get("Idempotency-Key")
        if key is None:
            execution_id = new_execution_id(requested_at)
        else:
            execution_id, first = await self._idempotent(wf.team or "", check_key(key), requested_at)
            if first is not None:
                if not same_start(first, wf.id, input_data):
                    raise ConflictError(
                        "this Idempotency-Key was used within the last 24 hours for another start "
                        "(another workflow or another input); a key names one start: use a new key "
                        "for a new start"
                    )  # naming neither the first run nor its workflow
                return await self._replayed(execution_id, first, wait)
        self._admit(wf.team)
        if self.d.start_limit is not None:
            self.d.start_limit.admit(wf.team)  # after a replay, which starts nothing
        topic = topic_names.requests(priority)
        caller = TraceParent.parse(request.headers.get(TRACEPARENT))
        with self._sending(topic, execution_id, caller) as parent:
            request_record = StartExecution(
                execution_id=execution_id,
                workflow=wf,
                input=input_data,
                priority=priority,
                requested_at=requested_at,
                traceparent=parent,
                links=links or {},
                reused=reused,
            )
            self.d.views.status.accept(request_record)
            try:
                await self._acknowledged(
                    Outgoing(
                        topic,
                        request_record.execution_id,
                        request_record,
                        "io.linkflow.execution.requested",
                        time=request_record.requested_at,
                        headers=((TRACEPARENT, parent.encode()),) if parent else (),
                    ),
                    f"the start of {execution_id}",
                    "it may or may not run. Retry with the same Idempotency-Key to be sure it runs once",
                )
            except UnavailableError:
                # not known to be on the log: no longer shown or counted as queued here (if it did
                # reach the log, the view reads it from the request topic and accepts it again)
                self.d.views.status.withdraw(request_record.execution_id)
                raise
        status = ExecutionStatus.PENDING
        if wait:
            ended = await self.d.views.status.wait_terminal(request_record.execution_id, wait)
            # after a wait that ran out the run may be queued or running by now: say where it is
            status = await self.d.views.status_of(request_record.execution_id) or status
            if ended or status.terminal:
                # the body as the text its row gets too (``status.body_texts``), rendered once
                text = await self.d.views.body_text(request_record.execution_id)
                return web.Response(text=text or "null", content_type="application/json")
        return web.json_response({"id": request_record.execution_id, "status": status.value}, status=202)

    def _admit(self, team: str | None) -> None:
        """Refuse the start with 429 when its team has too many runs queued. Nothing awaits
        between this and the start's ``accept`` into the status view, so starts here never
        overshoot the limit together."""
        if self.d.admission is None:
            return
        try:
            self.d.admission.check(team)
        except TooManyRequestsError as exc:
            if self.d.on_admission_rejected is not None:
                self.d.on_admission_rejected(exc.team_label)
            raise

    @contextlib.contextmanager
    def _sending(self, topic: str, execution_id: str, caller: TraceParent | None) -> Iterator[str | None]:
        """The ``traceparent`` a start request carries: its send span's when tracing is on (a child
        of the caller's ``traceparent`` header, if valid), else the caller's header as it came (so
        the run still joins the caller's trace), else none."""
        tracing = self.d.tracing
        if tracing is None:
            yield caller.header if caller else None
            return
        with sending(tracing, self.d.publisher.settings.topic(topic), execution_id, caller) as span:
            yield traceparent_of(span)

    async def _idempotent(self, team: str, key: str, at: datetime) -> tuple[str, dict[str, Any] | None]:
        """The id a start with this key gets, and the run it already named within 24 hours, if any
        (looked up after the views caught up, so a start acknowledged anywhere is found)."""
        current, previous = execution_ids(team, key, at)
        earlier = await self._synced(lambda: self.d.views.body(previous))
        if earlier is not None and still_named(earlier, at):
            return previous, earlier
        return current, await self._synced(lambda: self.d.views.body(current))

    async def _replayed(self, execution_id: str, first: dict[str, Any], wait: float | None) -> web.Response:
        """The answer to a repeated start: the first run, never a second one."""
        headers = {"Idempotent-Replayed": "true"}
        if wait and first["status"] in TERMINAL_STATUSES:
            return web.json_response(first, headers=headers)
        if wait and await self.d.views.status.wait_terminal(execution_id, wait):
            return web.json_response(await self.d.views.body(execution_id), headers=headers)
        return web.json_response({"id": execution_id, "status": first["status"]}, headers=headers)

    async def list_executions(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status not in EXECUTION_STATUSES:
            raise ValidationError(f"status must be one of {', '.join(EXECUTION_STATUSES)}")
        priority = request.query.get("priority") or None
        if priority is not None and priority not in PRIORITIES:
            raise ValidationError(f"priority must be one of {', '.join(PRIORITIES)}")
        view = request.query.get("view") or "full"
        if view not in LIST_VIEWS:
            raise ValidationError(f"view must be one of {', '.join(LIST_VIEWS)}")
        cursor = request.query.get("cursor") or None
        team = request.query.get("team") or None
        scope = principal_of(request).team_scope
        if scope is not None and team not in (None, scope):
            empty = {"executions": [], "count": 0, "next_cursor": None}
            return web.json_response(empty)  # another team's runs: as if there were none
        query = ExecutionQuery(
            status=status,
            workflow_id=request.query.get("workflow_id") or None,
            team=scope or team,
            priority=priority,
            created_after_ms=_time_param(request, "created_after"),
            created_before_ms=_time_param(request, "created_before"),
            after=Cursor.decode(cursor) if cursor else None,
            limit=_int_param(request, "limit", 50, low=1, high=LIST_LIMIT),
            summary=view == "summary",
        )
        bodies, next_cursor = await self.d.views.page(query)
        # the stored bodies are JSON already: joined, not decoded and encoded again
        text = (
            f'{{"executions":[{",".join(bodies)}],"count":{len(bodies)},'
            f'"next_cursor":{json.dumps(next_cursor)}}}'
        )
        return web.Response(text=text, content_type="application/json")

    async def get_execution(self, request: web.Request) -> web.Response:
        """The run's state now, or with ``?as_of_seq=N`` as it was after its event N."""
        as_of = _as_of_seq(request)
        body = await self._visible(request, request.match_info["id"])
        if as_of is not None:
            return await self._as_of(request.match_info["id"], body, as_of)
        return web.json_response(await self._with_links(body))

    async def rerun(self, request: web.Request) -> web.Response:
        """A new run of an ended one, linked both ways (``rerun_of`` / ``reruns``): from ``failed``
        it takes the outputs of the nodes that are still good (``core/rerun.py``) and runs the rest."""
        _start_params(request)
        execution_id = request.match_info["id"]
        # every field has a default: no body is the default rerun, as no body is the default pause
        body = validated(RerunBody, await _json_body(request)) if await request.read() else RerunBody()
        not_started = ConflictError(f"execution {execution_id} has not started yet; nothing to rerun")
        original = await self._started(request, execution_id, not_started)
        if not original.status.terminal:
            raise ConflictError(
                f"execution {execution_id} is still {original.status.value}; rerun it once it has ended "
                "(or cancel it first)"
            )
        if body.from_ == "failed" and original.status is ExecutionStatus.SUCCESS:
            raise ConflictError(
                f'execution {execution_id} succeeded: nothing failed to rerun; use "from": "start"'
            )
        wf = original.workflow
        if body.workflow_version == "latest":
            wf = await self._workflow(request, original.workflow.id)
        reused = reusable_outputs(original, wf) if body.from_ == "failed" else {}
        input_data = original.input if body.input_data is None else body.input_data
        carried = len(json.dumps([reused, input_data, wf.model_dump(mode="json")], separators=(",", ":")))
        limit = limit_of(topic_names.requests(_priority(request)))
        if carried > limit:
            raise ValidationError(
                f"this rerun would carry {carried} bytes (the reused outputs, the input and the "
                f'workflow), over the {limit}-byte limit of a start request; rerun from "start"'
            )
        return await self._start(
            request, wf, input_data, links={"rerun_of": execution_id}, reused=reused or None
        )

    async def execution_metrics(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["id"]
        not_started = NotFoundError(f"execution {execution_id!r} has not started yet; no metrics")
        state = await self._started(request, execution_id, not_started)
        return web.json_response(render_metrics(state, now()))

    async def _command(
        self,
        request: web.Request,
        execution_id: str,
        command: ExecutionCommand,
        ce_type: str,
        *,
        check: Callable[[ExecutionState], None] | None = None,
    ) -> ExecutionStatus:
        """Send a command to a run of the caller's team that has not ended (404 / 409 otherwise);
        ``check`` may refuse it on the started run's state first. Returns the run's status as the
        views knew it when the command was sent."""
        status = ExecutionStatus((await self._visible(request, execution_id))["status"])
        if status.terminal:
            raise ConflictError(f"execution {execution_id} already ended ({status.value})")
        if not await self.d.views.status.wait_started(execution_id, START_WAIT_SECONDS):
            raise ConflictError(
                f"execution {execution_id} was accepted but has not started within {START_WAIT_SECONDS:g} s; "
                "try again"
            )
        status = await self.d.views.status_of(execution_id) or status
        if status.terminal:  # its start was rejected while we waited
            raise ConflictError(f"execution {execution_id} already ended ({status.value})")
        ignored = QUEUED_IGNORES.get(command.kind)
        if ignored is not None and status is ExecutionStatus.QUEUED:
            # the decider holds nothing of a queued run (the gate admits it in its turn): a 202
            # here would be a command that never takes effect
            raise ConflictError(
                f"execution {execution_id} is queued, waiting for a concurrency slot: nothing of it "
                f"runs yet to {ignored}; cancel it, or {ignored} it once it runs"
            )
        if check is not None:
            state = await self.d.views.state(execution_id)
            if state is not None:
                check(state)
        await self._acknowledged(
            Outgoing(topic_names.COMMANDS, execution_id, command, ce_type),
            f"the {command.kind.value} command for {execution_id}",
        )
        return status

    async def recover(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["id"]
        command = ExecutionCommand(
            execution_id=execution_id, kind=CommandKind.RECOVER, reason="recover by request"
        )
        await self._command(request, execution_id, command, "io.linkflow.command.recover")
        return web.json_response({"id": execution_id, "status": "recovering"}, status=202)

    async def checkpoint(self, request: web.Request) -> web.Response:
        """Every transition is already durable as an event (a live run's state is its latest
        snapshot on the state topic and its events since, a finished run's is its events: ADR
        0039, 0071); this waits until this instance has read the log to its end and says how far
        that is."""
        execution_id = request.match_info["id"]
        if self.d.sync is not None:
            await self.d.sync(SYNC_SECONDS)
        not_started = ConflictError(f"execution {execution_id!r} has not started yet; nothing to checkpoint")
        state = await self._started(request, execution_id, not_started)
        last = max(
            [
                state.created_at,
                *(t.at for t in state.history),
                *(n.finished_at or n.started_at for n in state.nodes.values() if n.started_at),
            ]
        )
        return web.json_response(
            {
                "id": execution_id,
                "status": state.status.value,
                "seq": state.seq,
                "durable_through": iso(last),
                "log": "linkflow.events",
                "state": "linkflow.state.executions",
            }
        )

    async def set_timeout(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["id"]
        body = await _json_body(request)
        seconds = validated(TimeoutBody, body).timeout_seconds
        command = ExecutionCommand(
            execution_id=execution_id,
            kind=CommandKind.SET_TIMEOUT,
            timeout_seconds=seconds,
            reason="timeout set by request",
        )
        status = await self._command(request, execution_id, command, "io.linkflow.command.set_timeout")
        started = status is not ExecutionStatus.QUEUED  # (a run not accepted yet gets no command)
        return web.json_response(
            {
                "id": execution_id,
                "timeout_seconds": body["timeout_seconds"],
                # the decider counts from the start, or for a run not started yet (queued) from
                # its creation: the time it waits for a slot counts
                "counted_from": "the execution's start"
                if started
                else "the execution's creation (it is queued: the time it waits counts)",
            },
            status=202,
        )

    async def cancel_execution(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["id"]
        command = ExecutionCommand(
            execution_id=execution_id, kind=CommandKind.CANCEL, reason="cancelled by request"
        )
        await self._command(request, execution_id, command, "io.linkflow.command.cancel")
        return web.json_response({"id": execution_id, "status": "cancelling"}, status=202)

    async def pause_execution(self, request: web.Request) -> web.Response:
        """Stop dispatching (ADR 0034); 409 when the run ended or is already paused."""
        execution_id = request.match_info["id"]
        body = validated(PauseBody, await _json_body(request)) if await request.read() else PauseBody()
        await self._check_paused(request, execution_id, want_paused=False)
        command = ExecutionCommand(
            execution_id=execution_id,
            kind=CommandKind.PAUSE,
            reason="paused by request",
            suspend_deadline=body.deadline == "suspend",
        )
        await self._command(request, execution_id, command, "io.linkflow.command.pause")
        return web.json_response(
            {"id": execution_id, "status": "pausing", "deadline": body.deadline}, status=202
        )

    async def resume_execution(self, request: web.Request) -> web.Response:
        """Dispatch again, handling the timers that came due while paused; 409 unless paused."""
        execution_id = request.match_info["id"]
        await self._check_paused(request, execution_id, want_paused=True)
        command = ExecutionCommand(
            execution_id=execution_id, kind=CommandKind.RESUME, reason="resumed by request"
        )
        await self._command(request, execution_id, command, "io.linkflow.command.resume")
        return web.json_response({"id": execution_id, "status": "resuming"}, status=202)

    async def _check_paused(self, request: web.Request, execution_id: str, *, want_paused: bool) -> None:
        """409 when a run that has not ended is (pause) or is not (resume) paused, as the views
        know it; 404 and the ended run's 409 come from ``_command``."""
        status = ExecutionStatus((await self._visible(request, execution_id))["status"])
        if status.terminal:
            return
        if want_paused and status is not ExecutionStatus.PAUSED:
            raise ConflictError(f"execution {execution_id} is not paused ({status.value}); nothing to resume")
        if not want_paused and status is ExecutionStatus.PAUSED:
            raise ConflictError(f"execution {execution_id} is already paused; resume it first")

    def _signal_id(self, request: web.Request, given: str | None = None) -> str:
        """The signal's id: the body's, else the ``Idempotency-Key`` header, else a new one."""
        key = given or request.headers.get("Idempotency-Key")
        if key is None:
            return uuid.uuid4().hex
        if not re.match(SIGNAL_ID, key):
            raise ValidationError(f"Idempotency-Key must match {SIGNAL_ID}")
        return key

    async def signal_execution(self, request: web.Request) -> web.Response:
        """Deliver a signal (the JSON body is its payload) to one run; the run keeps it until a
        ``wait_event`` node on that name takes it, so it may come before the node waits."""
        execution_id = request.match_info["id"]
        name = _signal_name(request)
        payload = await _json_body(request) if await request.read() else None  # no body: no payload
        signal = Signal(name=name, id=self._signal_id(request), payload=payload)
        item = signal_command(execution_id, signal)
        assert isinstance(item.record, ExecutionCommand)
        # a name no node takes is refused once the run is known to be the caller's, not ended,
        # and started (an accepted run's workflow is checked too)
        await self._command(
            request, execution_id, item.record, item.ce_type, check=partial(_takes_signal, name=name)
        )
        return web.json_response(
            {"execution_id": execution_id, "name": name, "signal_id": signal.id, "status": "accepted"},
            status=202,
        )

    async def broadcast_signal(self, request: web.Request) -> web.Response:
        """Deliver a signal to every run of the caller's team waiting on ``name`` with the key, as
        the views show them once synced with the log; none waiting: nobody gets it (not kept)."""
        name = _signal_name(request)
        body = validated(BroadcastSignalBody, await _json_body(request))
        signal = Signal(
            name=name,
            id=self._signal_id(request, body.id),
            payload=body.payload,
            correlation_key=key_text(body.correlation_key),
        )
        if self.d.sync is not None:
            await self.d.sync(SYNC_SECONDS)
        principal = principal_of(request)
        targets = broadcast_targets(self.d.views.status, signal, lambda s: principal.sees(s.workflow.team))
        if targets:
            await self._acknowledged([signal_command(t, signal) for t in targets], f"signal {name}")
        return web.json_response(
            {
                "name": name,
                "correlation_key": signal.correlation_key,
                "signal_id": signal.id,
                "matched": len(targets),
                "execution_ids": targets,
            },
            status=202,
        )

    async def execution_cost(self, request: web.Request) -> web.Response:
        execution_id = request.match_info["id"]
        not_started = NotFoundError(f"execution {execution_id!r} has not started yet; it has cost nothing")
        return web.json_response(cost_of(await self._started(request, execution_id, not_started)))

    async def cost_report(self, request: web.Request) -> web.Response:
        """``?period=day|week|month|all`` (default month): costs per workflow, with suggestions."""
        period = request.query.get("period", "month")
        if period not in PERIODS:
            raise ValidationError(f"period must be one of {', '.join(PERIODS)}")
        group_by = request.query.get("group_by", "workflow")
        if group_by not in GROUPS:
            raise ValidationError(f"group_by must be one of {', '.join(GROUPS)}")
        team = principal_of(request).team_scope
        return web.json_response(await self.d.views.cost_report(period, now(), group_by, team=team))

    async def get_logs(self, request: web.Request) -> web.Response:
        """``?level=info|warning|error&node_id=&q=&limit=``: searchable lines, oldest first."""
        execution_id = request.match_info["id"]
        level = request.query.get("level", "debug")
        if level not in LEVELS:
            raise ValidationError(f"level must be one of {', '.join(LEVELS)}")
        limit = _int_param(request, "limit", 1000, low=1, high=LOGS_LIMIT)
        await self._visible(request, execution_id)
        found = await self.d.views.lines(
            execution_id,
            level=level,
            node_id=request.query.get("node_id") or None,
            text=request.query.get("q") or None,
            limit=limit,
        )
        rows = [line for _seq, _n, line in found]
        return web.json_response({"id": execution_id, "logs": rows, "count": len(rows)})

    async def _socket(self, request: web.Request, execution_id: str) -> web.WebSocketResponse:
        """A WebSocket on a run the caller may see (404 before the upgrade otherwise)."""
        await self._visible(request, execution_id)
        ws = web.WebSocketResponse(heartbeat=20, protocols=(WS_PROTOCOL,))
        await ws.prepare(request)
        return ws

    async def _with_links(self, body: dict[str, Any]) -> dict[str, Any]:
        """``GET /api/executions/{id}``'s body: the run's, with the runs that link to it."""
        return {**body, **await self.d.views.linked(body["id"])}

    async def stream_logs(self, request: web.Request) -> web.StreamResponse:
        """WebSocket: every line so far, then each new one, until the execution ends."""
        execution_id = request.match_info["id"]
        ws = await self._socket(request, execution_id)
        followers = self.d.views.logs
        queue = followers.follow(execution_id)  # subscribe before reading the backlog: no line falls between
        try:
            # Read before the backlog: a run that ends after this read has its last lines and its
            # end published to the queue, and one that had ended has them all in the backlog
            # (``lines`` waits for the folds applied so far to be written). Read after it, a run
            # that ended while the backlog was read and sent lost its last lines.
            status = await self.d.views.status_of(execution_id)
            last = (0, -1)
            for seq, n, line in await self.d.views.lines(execution_id):
                await ws.send_json(line)
                last = (seq, n)
            if status is not None and not status.terminal:
                await _relay(queue, ws, last)
        finally:
            followers.unfollow(execution_id, queue)
            await ws.close()
        return ws

    async def watch_execution(self, request: web.Request) -> web.StreamResponse:
        """WebSocket: the run's body (as ``GET /api/executions/{id}``) now, then again each time it
        changes, until it ends. Changes that come faster than the client reads are coalesced: it
        always gets the latest body, never a backlog (``StatusView.watch``)."""
        execution_id = request.match_info["id"]
        ws = await self._socket(request, execution_id)
        status = self.d.views.status
        changed = status.watch(execution_id)  # before the first read: no change falls between
        closed = asyncio.ensure_future(ws.receive())  # a client sends nothing; any message is its close
        woken: asyncio.Future[Any] | None = None
        try:
            sent: str | None = None
            while True:
                changed.clear()
                body = await self.d.views.body(execution_id)
                if body is None:
                    return ws
                text = json.dumps(await self._with_links(body))
                if text != sent:
                    await ws.send_str(text)
                    sent = text
                if body["status"] in TERMINAL_STATUSES:
                    return ws
                woken = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait({woken, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    return ws
        finally:
            # the handler may end inside asyncio.wait (cancelled with its connection, or raising):
            # both waiters go with it, or the event's waiter would outlive the socket
            for pending in (woken, closed):
                if pending is not None:
                    pending.cancel()
            status.unwatch(execution_id, changed)
            await ws.close()

    async def workers_status(self, request: web.Request) -> web.Response:
        """The worker registry's status (as 8085 serves it), read-only on this port for the UI's
        operations page; admin only, as on 8085 and as the page's queue figures are."""
        if self.d.workers is None:
            raise NotFoundError("workers are not known on this instance")
        return web.json_response(self.d.workers())

    # -- the event log of a run (read from linkflow.events) --------------------------------------
    async def _events(self, execution_id: str, body: dict[str, Any]) -> list[ExecutionEvent]:
        """The run's events in log order, each seq once (a repeated seq is a duplicate)."""
        if self.d.events is None:
            raise NotFoundError("the event log is not readable on this instance")
        created = body.get("created_at")
        found = await self.d.events(execution_id, _parse_time(created) if isinstance(created, str) else None)
        distinct: dict[int, ExecutionEvent] = {}
        for event in found:
            distinct.setdefault(event.seq, event)
        return list(distinct.values())

    async def execution_events(self, request: web.Request) -> web.Response:
        """``?type=``: the events of a run of the caller's team, oldest first."""
        execution_id = request.match_info["id"]
        wanted = request.query.get("type") or None
        if wanted is not None and wanted not in EVENT_TYPES:
            raise ValidationError(f"type must be one of {', '.join(EVENT_TYPES)}")
        body = await self._visible(request, execution_id)
        rows = [
            e.model_dump(mode="json", exclude_none=True)
            for e in await self._events(execution_id, body)
            if wanted is None or matches_type(e, wanted)
        ]
        return web.json_response({"id": execution_id, "events": rows, "count": len(rows)})

    async def _as_of(self, execution_id: str, body: dict[str, Any], as_of: int) -> web.Response:
        """The run's state folded from its events up to seq ``as_of`` (404 past its last event)."""
        events = await self._events(execution_id, body)
        last = max((e.seq for e in events), default=0)
        if as_of > last:
            raise NotFoundError(
                f"execution {execution_id!r} has events up to seq {last}; there is no event {as_of}"
            )
        state: ExecutionState | None = None
        try:
            for event in events:
                if event.seq <= as_of:
                    state = apply(state, event)
        except EvolveError as exc:
            raise ConflictError(f"the event log of {execution_id} cannot be folded: {exc}") from exc
        if state is None:
            raise NotFoundError(f"the first events of {execution_id} are no longer in the log")
        return web.json_response({**render(state), "as_of_seq": state.seq})

    async def get_queue_status(self, request: web.Request) -> web.Response:
        if self.d.queue_status is None:
            raise NotFoundError("queue status is not available on this instance")
        return web.json_response(await self.d.queue_status())

    async def get_circuits(self, request: web.Request) -> web.Response:
        """Every circuit breaker open or with failures in its window, as every instance folds them."""
        if self.d.circuits is None:
            raise NotFoundError("circuit breakers are not kept on this instance")
        circuits = self.d.circuits()
        return web.json_response({"circuits": circuits, "count": len(circuits)})

    # -- keys (admin) ------------------------------------------------------------------------------
    def _keys(self) -> KeyView:
        if self.d.keys is None:
            raise NotFoundError("API keys are not managed on this instance")
        return self.d.keys

    async def list_keys(self, request: web.Request) -> web.Response:
        """Every key, without its secret or hash."""
        found = [k.public() for k in self._keys().listed()]
        return web.json_response({"keys": found, "count": len(found)})

    async def create_key(self, request: web.Request) -> web.Response:
        """``{"team", "role", "name"?}``: a new key, shown in this answer only."""
        keys = self._keys()
        body = validated(KeyCreateBody, await _json_body(request))
        key, record = new_key(body.team, Role(body.role), body.name, now())
        await self._acknowledged(key_record(record, KEY_CREATED), f"key {record.id}")
        keys.apply(record)
        return web.json_response({**record.public(), "key": key}, status=201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        keys = self._keys()
        key_id = request.match_info["id"]
        record: ApiKey | None = await self._synced(lambda: keys.keys.get(key_id))
        if record is None or record.is_webhook_token:
            raise NotFoundError(f"no key with id {key_id!r}")
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": now()})
            await self._acknowledged(key_record(record, KEY_REVOKED), f"revocation of key {record.id}")
            keys.apply(record)
        return web.json_response(record.public())

    # -- schedules ---------------------------------------------------------------------------------
    def _schedule_view(self) -> ScheduleView:
        if self.d.schedules is None:
            raise NotFoundError("schedules are not kept on this instance")
        return self.d.schedules

    async def _schedule(self, request: web.Request, schedule_id: str) -> Schedule:
        """A schedule of the caller's team (404 otherwise, as for a missing one)."""
        principal = principal_of(request)
        view = self._schedule_view()

        def owned() -> Schedule | None:
            found = view.get(schedule_id)
            return found if found is not None and principal.sees(found.team) else None

        schedule: Schedule | None = await self._synced(owned)
        if schedule is None:
            raise NotFoundError(f"schedule {schedule_id!r} does not exist")
        return schedule

    async def _publish_schedule(self, schedule: Schedule) -> web.Response:
        view = self._schedule_view()
        await self._acknowledged(
            Outgoing(
                topic_names.SCHEDULES, schedule.id, schedule, "io.linkflow.schedule.changed", time=now()
            ),
            f"schedule {schedule.id}",
        )
        view.apply(schedule.id, schedule)
        return web.json_response(view.body(schedule, now()))

    async def create_schedule(self, request: web.Request) -> web.Response:
        """A new schedule of a workflow of the caller's team; its slots count from now."""
        body = validated(ScheduleBody, await _json_body(request))
        at = now().replace(microsecond=0)
        schedule = validated(Schedule, {**body.model_dump(), "created_at": at, "effective_from": at})
        wf = await self._workflow(request, body.workflow_id)
        schedule = schedule.model_copy(update={"team": wf.team})
        view = self._schedule_view()
        if await self._synced(lambda: view.get(body.id)) is not None:
            raise ConflictError(f"schedule {body.id!r} exists; change it with PATCH or delete it first")
        answer = await self._publish_schedule(schedule)
        answer.set_status(201)
        return answer

    async def list_schedules(self, request: web.Request) -> web.Response:
        view = self._schedule_view()
        found = [view.body(s, now()) for s in view.listed(principal_of(request).team_scope)]
        return web.json_response({"schedules": found, "count": len(found)})

    async def get_schedule(self, request: web.Request) -> web.Response:
        schedule = await self._schedule(request, request.match_info["id"])
        return web.json_response(self._schedule_view().body(schedule, now()))

    async def change_schedule(self, request: web.Request) -> web.Response:
        """Pause, resume or change a schedule. Slots of the old timing, or of the pause, are not
        owed: a new timing or a resume counts from now."""
        current = await self._schedule(request, request.match_info["id"])
        change = validated(ScheduleChange, await _json_body(request)).model_dump(exclude_unset=True)
        # one timing replaces the other (a null beside it is not a second one)
        cron, every = change.get("cron") is not None, change.get("every_seconds") is not None
        if cron and every:
            raise ValidationError("give cron or every_seconds, not both")
        if cron:
            change["every_seconds"] = None
        elif every:
            change["cron"] = None
        if "workflow_id" in change:
            if change["workflow_id"] is None:
                raise ValidationError("workflow_id cannot be null; name the workflow to run")
            change["team"] = (await self._workflow(request, change["workflow_id"])).team
        resumed = current.paused and change.get("paused") is False
        if resumed or any(k in change for k in ("cron", "every_seconds", "timezone")):
            change["effective_from"] = now().replace(microsecond=0)
        schedule = validated(Schedule, {**current.model_dump(), **change})
        return await self._publish_schedule(schedule)

    async def delete_schedule(self, request: web.Request) -> web.Response:
        schedule = await self._schedule(request, request.match_info["id"])
        await acknowledged(
            self.d.publisher.send_raw(topic_names.SCHEDULES, schedule.id.encode(), None, []),
            f"deleting schedule {schedule.id}",
            overdue=self.d.publisher.overdue,
        )
        self._schedule_view().apply(schedule.id, None)
        return web.json_response({"id": schedule.id, "deleted": True})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = dict(self.d.readiness())
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503
        )

    async def metrics(self, request: web.Request) -> web.Response:
        if self.d.metrics is None:
            raise NotFoundError("metrics are not enabled")
        return web.Response(
            body=self.d.metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type": "version=0.0.4"},
        )
