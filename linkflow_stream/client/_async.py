"""The asyncio client, over aiohttp (the engine's own HTTP library)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

import aiohttp

from linkflow_stream.client import _calls as calls
from linkflow_stream.client._calls import Answer, Call, Priority, Started, Status
from linkflow_stream.client._config import DEFAULT_TIMEOUT, base_headers, base_url
from linkflow_stream.client._errors import ConnectionFailed, NotFound, WaitTimedOut
from linkflow_stream.http.responses import (
    Accepted,
    Execution,
    ExecutionPage,
    ExecutionSummaryPage,
    LogLine,
    Readiness,
    WorkflowRegistered,
    WorkflowSummary,
)

T = TypeVar("T")


class AsyncClient:
    """The execution API (port 8084) from asyncio code: the same calls as ``Client``, awaited.

    Use it as ``async with AsyncClient() as client:`` (or call ``aclose()``): it holds one aiohttp
    session, whose connections are reused between calls. ``url``, ``api_key`` and ``timeout`` as
    for ``Client``.
    """

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self._headers = base_headers(api_key)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (its pooled connections)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, call: Call[T]) -> T:
        """Send one call and read its answer (every method below is one of these)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        timeout = aiohttp.ClientTimeout(total=self.timeout + call.timeout_extra)
        try:
            async with self._session.request(
                call.method, call.url(self.url), data=call.data(), headers=dict(call.headers), timeout=timeout
            ) as resp:
                text = await resp.text(errors="replace")
                answer = Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailed(f"no answer from {self.url}: {exc!r}") from exc
        return call.read(answer)

    # -- workflows --------------------------------------------------------------------------------
    async def register_workflow(self, definition: Mapping[str, Any]) -> WorkflowRegistered:
        """Register a workflow: a new version if its id exists and the definition changed;
        ``{"id", "version"}``, with ``"unchanged": True`` if the latest version was the same."""
        return await self.send(calls.register_workflow(definition))

    async def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return await self.send(calls.get_workflow(workflow_id))

    async def list_workflows(self) -> list[WorkflowSummary]:
        return await self.send(calls.list_workflows())

    async def set_workflow_retry(self, workflow_id: str, **policy: Any) -> dict[str, Any]:
        """``strategy="exponential"|"fixed"|"none"``, ``max_attempts``, ``initial_delay_seconds`` ..."""
        return await self.send(calls.set_workflow_retry(workflow_id, policy))

    # -- executions -------------------------------------------------------------------------------
    async def start_execution(
        self,
        workflow_id: str,
        input_data: Any = None,
        *,
        wait: float | None = None,
        priority: Priority | None = None,
        idempotency_key: str | None = None,
    ) -> Started:
        """Start a run. With ``wait`` (seconds, at most 300) the engine answers when the run ends,
        if it ends by then (``Started.execution``). The same ``idempotency_key`` within 24 hours
        names the same run (``Started.replayed``)."""
        call = calls.start_execution(
            workflow_id, input_data, wait=wait, priority=priority, idempotency_key=idempotency_key
        )
        return await self.send(call)

    async def get_execution(self, execution_id: str) -> Execution:
        return await self.send(calls.get_execution(execution_id))

    async def list_executions(
        self,
        *,
        status: Status | None = None,
        workflow_id: str | None = None,
        team: str | None = None,
        priority: Priority | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ExecutionPage:
        """One page, newest first; pass its ``next_cursor`` as ``cursor`` for the next."""
        return await self.send(
            calls.list_executions(
                status=status,
                workflow_id=workflow_id,
                team=team,
                priority=priority,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
                cursor=cursor,
            )
        )

    async def list_execution_summaries(
        self,
        *,
        status: Status | None = None,
        workflow_id: str | None = None,
        team: str | None = None,
        priority: Priority | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ExecutionSummaryPage:
        """``list_executions`` without each run's input, nodes and history: for lists and
        dashboards, whose pages stay small whatever the runs carry (ADR 0051)."""
        return await self.send(
            calls.list_execution_summaries(
                status=status,
                workflow_id=workflow_id,
                team=team,
                priority=priority,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
                cursor=cursor,
            )
        )

    async def iter_executions(
        self,
        *,
        status: Status | None = None,
        workflow_id: str | None = None,
        team: str | None = None,
        priority: Priority | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Execution]:
        """Every matching run, newest first, page after page (following ``next_cursor``)."""
        cursor: str | None = None
        while True:
            page = await self.list_executions(
                status=status,
                workflow_id=workflow_id,
                team=team,
                priority=priority,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            for execution in page["executions"]:
                yield execution
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def wait_for(
        self, execution_id: str, seconds: float, *, poll: float = 0.5, not_found_is_pending: bool = False
    ) -> Execution:
        """The run once it has ended (polled every ``poll`` s); ``WaitTimedOut`` if it has not within
        ``seconds``. ``not_found_is_pending``: a run not found counts as not made yet until then (a
        start sent through Kafka, ``start_via_kafka``, is made by the intake a moment later), and is
        ``NotFound`` only at the end of the wait."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                execution = await self.get_execution(execution_id)
            except NotFound:
                if not not_found_is_pending or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                continue
            if execution["status"] in calls.TERMINAL:
                return execution
            if time.monotonic() >= deadline:
                raise WaitTimedOut(
                    f"execution {execution_id} is still {execution['status']} after {seconds:g} s"
                )
            await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    async def cancel_execution(self, execution_id: str) -> Accepted:
        """Ask a run to stop (202 ``cancelling``); ``Conflict`` once it has ended."""
        return await self.send(calls.cancel_execution(execution_id))

    async def pause_execution(
        self, execution_id: str, deadline: Literal["keep", "suspend"] = "keep"
    ) -> Accepted:
        """Stop dispatching (202 ``pausing``); ``Conflict`` once it has ended, if already paused, or
        while it is queued for a concurrency slot. ``deadline="suspend"`` stops the run's deadline
        while paused."""
        return await self.send(calls.pause_execution(execution_id, deadline))

    async def resume_execution(self, execution_id: str) -> Accepted:
        """Dispatch again (202 ``resuming``); ``Conflict`` unless the run is paused."""
        return await self.send(calls.resume_execution(execution_id))

    async def recover_execution(self, execution_id: str) -> Accepted:
        return await self.send(calls.recover_execution(execution_id))

    async def set_timeout(self, execution_id: str, timeout_seconds: float) -> dict[str, Any]:
        return await self.send(calls.set_timeout(execution_id, timeout_seconds))

    async def signal_execution(
        self, execution_id: str, name: str, payload: Any = None, signal_id: str | None = None
    ) -> dict[str, Any]:
        """Signal one run (202); ``NotFound`` for no such run, ``Conflict`` once it has ended or when
        no ``wait_event`` node of its workflow waits on ``name``."""
        return await self.send(calls.signal_execution(execution_id, name, payload, signal_id))

    async def broadcast_signal(
        self, name: str, correlation_key: str | int, payload: Any = None, signal_id: str | None = None
    ) -> dict[str, Any]:
        """Signal every run waiting on ``name`` with ``correlation_key``; ``matched`` says how many."""
        return await self.send(calls.broadcast_signal(name, correlation_key, payload, signal_id))

    async def execution_metrics(self, execution_id: str) -> dict[str, Any]:
        return await self.send(calls.execution_metrics(execution_id))

    async def logs(
        self,
        execution_id: str,
        *,
        level: Literal["debug", "info", "warning", "error"] | None = None,
        node_id: str | None = None,
        q: str | None = None,
        limit: int | None = None,
    ) -> list[LogLine]:
        return await self.send(calls.logs(execution_id, level=level, node_id=node_id, q=q, limit=limit))

    # -- costs and the rest -----------------------------------------------------------------------
    async def execution_cost(self, execution_id: str) -> dict[str, Any]:
        return await self.send(calls.execution_cost(execution_id))

    async def cost_report(
        self,
        *,
        period: Literal["day", "week", "month", "all"] | None = None,
        group_by: Literal["workflow", "team"] | None = None,
    ) -> dict[str, Any]:
        return await self.send(calls.cost_report(period=period, group_by=group_by))

    async def readiness(self) -> Readiness:
        return await self.send(calls.readiness())

    async def openapi(self) -> dict[str, Any]:
        return await self.send(calls.openapi())
