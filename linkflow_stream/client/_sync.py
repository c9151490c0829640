"""The blocking client, over the standard library's urllib (no dependency, usable in any script)."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

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


class Client:
    """The execution API (port 8084) from blocking code.

    ``url`` defaults to ``LINKFLOW_URL``, else ``http://127.0.0.1:8084``; ``api_key`` to
    ``LINKFLOW_API_KEY`` (sent as ``Authorization: Bearer``; none is needed on loopback without
    keys). ``timeout`` is seconds per call, plus whatever ``wait`` a call asks the engine to hold
    the answer. Errors are ``linkflow_stream.client`` errors (``NotFound``, ``ValidationFailed``,
    ``ConnectionFailed`` ...), each a ``LinkflowError`` with ``retryable``.
    """

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self._headers = base_headers(api_key)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (urllib opens a connection per call); here for symmetry with ``AsyncClient``."""

    def send(self, call: Call[T]) -> T:
        """Send one call and read its answer (every method below is one of these)."""
        request = urllib.request.Request(  # noqa: S310 - base_url() allows http(s) only
            call.url(self.url),
            data=call.data(),
            method=call.method,
            headers={**self._headers, **call.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + call.timeout_extra) as resp:  # noqa: S310
                answer = Answer(
                    resp.status, _lower(resp.headers.items()), resp.read().decode("utf-8", "replace")
                )
        except urllib.error.HTTPError as err:
            answer = Answer(err.code, _lower(err.headers.items()), err.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ConnectionFailed(f"no answer from {self.url}: {reason}") from exc
        return call.read(answer)

    # -- workflows --------------------------------------------------------------------------------
    def register_workflow(self, definition: Mapping[str, Any]) -> WorkflowRegistered:
        """Register a workflow: a new version if its id exists and the definition changed;
        ``{"id", "version"}``, with ``"unchanged": True`` if the latest version was the same."""
        return self.send(calls.register_workflow(definition))

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return self.send(calls.get_workflow(workflow_id))

    def list_workflows(self) -> list[WorkflowSummary]:
        return self.send(calls.list_workflows())

    def set_workflow_retry(self, workflow_id: str, **policy: Any) -> dict[str, Any]:
        """``strategy="exponential"|"fixed"|"none"``, ``max_attempts``, ``initial_delay_seconds`` ..."""
        return self.send(calls.set_workflow_retry(workflow_id, policy))

    # -- executions -------------------------------------------------------------------------------
    def start_execution(
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
        return self.send(call)

    def get_execution(self, execution_id: str) -> Execution:
        return self.send(calls.get_execution(execution_id))

    def list_executions(
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
        return self.send(
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

    def list_execution_summaries(
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
        return self.send(
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

    def iter_executions(
        self,
        *,
        status: Status | None = None,
        workflow_id: str | None = None,
        team: str | None = None,
        priority: Priority | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Execution]:
        """Every matching run, newest first, page after page (following ``next_cursor``)."""
        cursor: str | None = None
        while True:
            page = self.list_executions(
                status=status,
                workflow_id=workflow_id,
                team=team,
                priority=priority,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            yield from page["executions"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def wait_for(
        self, execution_id: str, seconds: float, *, poll: float = 0.5, not_found_is_pending: bool = False
    ) -> Execution:
        """The run once it has ended (polled every ``poll`` s); ``WaitTimedOut`` if it has not within
        ``seconds``. ``not_found_is_pending``: a run not found counts as not made yet until then (a
        start sent through Kafka, ``start_via_kafka``, is made by the intake a moment later), and is
        ``NotFound`` only at the end of the wait."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                execution = self.get_execution(execution_id)
            except NotFound:
                if not not_found_is_pending or time.monotonic() >= deadline:
                    raise
                time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                continue
            if execution["status"] in calls.TERMINAL:
                return execution
            if time.monotonic() >= deadline:
                raise WaitTimedOut(
                    f"execution {execution_id} is still {execution['status']} after {seconds:g} s"
                )
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def cancel_execution(self, execution_id: str) -> Accepted:
        """Ask a run to stop (202 ``cancelling``); ``Conflict`` once it has ended."""
        return self.send(calls.cancel_execution(execution_id))

    def pause_execution(self, execution_id: str, deadline: Literal["keep", "suspend"] = "keep") -> Accepted:
        """Stop dispatching (202 ``pausing``); ``Conflict`` once it has ended, if already paused, or
        while it is queued for a concurrency slot. ``deadline="suspend"`` stops the run's deadline
        while paused."""
        return self.send(calls.pause_execution(execution_id, deadline))

    def resume_execution(self, execution_id: str) -> Accepted:
        """Dispatch again (202 ``resuming``); ``Conflict`` unless the run is paused."""
        return self.send(calls.resume_execution(execution_id))

    def recover_execution(self, execution_id: str) -> Accepted:
        return self.send(calls.recover_execution(execution_id))

    def set_timeout(self, execution_id: str, timeout_seconds: float) -> dict[str, Any]:
        return self.send(calls.set_timeout(execution_id, timeout_seconds))

    def signal_execution(
        self, execution_id: str, name: str, payload: Any = None, signal_id: str | None = None
    ) -> dict[str, Any]:
        """Signal one run (202); ``NotFound`` for no such run, ``Conflict`` once it has ended or when
        no ``wait_event`` node of its workflow waits on ``name``."""
        return self.send(calls.signal_execution(execution_id, name, payload, signal_id))

    def broadcast_signal(
        self, name: str, correlation_key: str | int, payload: Any = None, signal_id: str | None = None
    ) -> dict[str, Any]:
        """Signal every run waiting on ``name`` with ``correlation_key``; ``matched`` says how many."""
        return self.send(calls.broadcast_signal(name, correlation_key, payload, signal_id))

    def execution_metrics(self, execution_id: str) -> dict[str, Any]:
        return self.send(calls.execution_metrics(execution_id))

    def logs(
        self,
        execution_id: str,
        *,
        level: Literal["debug", "info", "warning", "error"] | None = None,
        node_id: str | None = None,
        q: str | None = None,
        limit: int | None = None,
    ) -> list[LogLine]:
        return self.send(calls.logs(execution_id, level=level, node_id=node_id, q=q, limit=limit))

    # -- costs and the rest -----------------------------------------------------------------------
    def execution_cost(self, execution_id: str) -> dict[str, Any]:
        return self.send(calls.execution_cost(execution_id))

    def cost_report(
        self,
        *,
        period: Literal["day", "week", "month", "all"] | None = None,
        group_by: Literal["workflow", "team"] | None = None,
    ) -> dict[str, Any]:
        return self.send(calls.cost_report(period=period, group_by=group_by))

    def readiness(self) -> Readiness:
        return self.send(calls.readiness())

    def openapi(self) -> dict[str, Any]:
        return self.send(calls.openapi())


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}
