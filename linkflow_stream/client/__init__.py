"""A typed Python client for LinkFlow Stream's execution API: ``Client`` (blocking, urllib) and
``AsyncClient`` (asyncio, aiohttp), with the same methods.

    from linkflow_stream.client import Client

    with Client() as lf:  # LINKFLOW_URL, LINKFLOW_API_KEY; default http://127.0.0.1:8084
        lf.register_workflow({"id": "wf_1", "nodes": [...]})
        run = lf.start_execution("wf_1", {"n": 30}, wait=10, priority="high")
        print(run.status, run.execution["nodes"] if run.execution else None)

Answers are typed (``Execution``, ``ExecutionPage``, ``LogLine`` ...: the ``TypedDict`` s the
engine's OpenAPI document is built from). Every error the engine answers becomes one class
(``ValidationFailed`` 400, ``Unauthorized`` 401, ``Forbidden`` 403, ``NotFound`` 404,
``Conflict`` 409, ``TooManyRequests`` 429 with ``retry_after_seconds``, ``Unavailable`` 503), no
answer at all ``ConnectionFailed``; all are
``LinkflowError`` s with ``error_type`` and ``retryable``.

Starting a run by producing (the ``io.linkflow.StartRequest`` contract on ``linkflow.start``,
ADR 0023) is ``start_via_kafka``: it returns the run's id, then any client reads the run.
"""

from linkflow_stream.client._async import AsyncClient
from linkflow_stream.client._calls import TERMINAL, Started
from linkflow_stream.client._config import DEFAULT_URL
from linkflow_stream.client._errors import (
    ApiError,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimedOut,
)
from linkflow_stream.client._kafka import start_via_kafka
from linkflow_stream.client._sync import Client
from linkflow_stream.http.responses import (
    Accepted,
    ErrorBody,
    Execution,
    ExecutionPage,
    ExecutionSummary,
    ExecutionSummaryPage,
    LogLine,
    NodeStatus,
    WorkflowRegistered,
    WorkflowSummary,
)

__all__ = [
    "DEFAULT_URL",
    "TERMINAL",
    "Accepted",
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "ErrorBody",
    "Execution",
    "ExecutionPage",
    "ExecutionSummary",
    "ExecutionSummaryPage",
    "Forbidden",
    "LogLine",
    "NodeStatus",
    "NotFound",
    "ServerError",
    "Started",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimedOut",
    "WorkflowRegistered",
    "WorkflowSummary",
    "start_via_kafka",
]
