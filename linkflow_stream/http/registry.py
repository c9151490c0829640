"""The worker registry API on port 8085 (EXEC-004's contract)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.errors import ConflictError, NotFoundError, ValidationError
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.strict_json import loads
from linkflow_stream.http.auth import authentication
from linkflow_stream.http.bodies import WorkerRegistration, validated
from linkflow_stream.http.errors import acknowledged, errors_as_json
from linkflow_stream.http.openapi import document_routes, registry_document
from linkflow_stream.kafka.publisher import Publisher
from projections.workers import WorkerRecord, WorkerState, WorkerView


class RegistryApi:
    ADMIN_ROUTES = (
        ("POST", "/api/workers/register"),
        ("POST", "/api/workers/{id}/heartbeat"),
        ("POST", "/api/workers/{id}/deregister"),
        ("GET", "/api/workers/status"),
    )
    """Workers are an admin's, their status too (docs/security.md: other keys are not trusted with
    workers; the UI's operations page needs admin for its queue figures anyway)."""

    def __init__(
        self,
        publisher: Publisher,
        view: WorkerView,
        sync: Callable[[float], Awaitable[bool]],
        auth: Middleware | None = None,
    ) -> None:
        self.publisher = publisher
        self.view = view
        self.sync = sync
        self.auth = auth

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[errors_as_json, self.auth or authentication(None)], client_max_size=64 * 1024
        )
        app.add_routes(
            [
                web.post("/api/workers/register", self.register),
                web.post("/api/workers/{id}/heartbeat", self.heartbeat),
                web.post("/api/workers/{id}/deregister", self.deregister),
                web.get("/api/workers/status", self.status),
                web.get("/healthz", self.healthz),
                *document_routes(registry_document(self.ADMIN_ROUTES)),
            ]
        )
        return app

    async def _publish(self, record: WorkerRecord, ce_type: str) -> None:
        """Put the record on the log (503 if Kafka does not acknowledge it in time), then in the view."""
        outgoing = Outgoing(topic_names.WORKERS, record.id, record, ce_type, time=record.heartbeat_at)
        await acknowledged(
            self.publisher.send([outgoing]), f"worker {record.id}'s record", overdue=self.publisher.overdue
        )
        self.view.apply(record)

    async def _known(self, worker_id: str) -> WorkerRecord:
        record = self.view.get(worker_id)
        if record is None:
            await self.sync(2.0)
            record = self.view.get(worker_id)
        if record is None or record.state is WorkerState.DEREGISTERED:
            raise NotFoundError(f"worker {worker_id!r} is not registered")
        _not_an_engine(record)
        return record

    async def register(self, request: web.Request) -> web.Response:
        try:
            body = loads(await request.read() or b"null")
        except (ValueError, RecursionError) as exc:
            raise ValidationError(f"malformed JSON: {exc}") from exc
        registration = validated(WorkerRegistration, body)
        existing = self.view.get(registration.id)
        if existing is not None and existing.state is WorkerState.ACTIVE:
            _not_an_engine(existing)
        at = now()
        record = WorkerRecord(
            id=registration.id,
            capacity=registration.capacity,
            tags=tuple(dict.fromkeys(registration.tags)),
            registered_at=at,
            heartbeat_at=at,
        )
        await self._publish(record, "io.linkflow.worker.registered")
        return web.json_response({"id": record.id, "status": "registered"}, status=201)

    async def heartbeat(self, request: web.Request) -> web.Response:
        record = await self._known(request.match_info["id"])
        await self._publish(record.model_copy(update={"heartbeat_at": now()}), "io.linkflow.worker.heartbeat")
        return web.json_response({"id": record.id, "status": "alive"})

    async def deregister(self, request: web.Request) -> web.Response:
        record = await self._known(request.match_info["id"])
        gone = record.model_copy(update={"state": WorkerState.DEREGISTERED, "heartbeat_at": now()})
        await self._publish(gone, "io.linkflow.worker.deregistered")
        return web.json_response({"id": record.id, "status": "deregistered"}, status=202)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.view.status(now()))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def _not_an_engine(record: WorkerRecord) -> None:
    """409 for a running engine process's own record: it writes that record itself every
    heartbeat, so a registration over it, a heartbeat or a deregistration would hold only until its
    next one. A stopped engine's record (down: its heartbeats stopped) may be deregistered, which
    takes it out of the listing before it is forgotten after an hour."""
    if record.engine and record.alive(now()):
        raise ConflictError(
            f"worker {record.id!r} is a running engine process (roles {', '.join(record.roles) or 'none'}), "
            "which registers itself every heartbeat; choose another id (its record can be "
            "deregistered once the process has stopped)"
        )
