"""How every HTTP error leaves both APIs: ``{"error": {"type", "message"}}`` with its status.

The error classes of the core carry a ``error_type``; this is the one place that maps it to an
HTTP status, so a handler raises what went wrong and never builds an error response itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from linkflow_stream.core.admission import TooManyRequestsError
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.kafka.publisher import ACK_SECONDS, Backlogged, Overdue, acknowledged_within

log = logging.getLogger(__name__)

STATUS = {
    "validation": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "too_many_requests": 429,
    "unavailable": 503,
}


class UnavailableError(LinkflowError):
    """The engine cannot do it now (Kafka did not acknowledge); the same request may work later."""

    error_type = "unavailable"


class UnauthorizedError(LinkflowError):
    """No API key, or one that is unknown or revoked (HTTP 401)."""

    error_type = "unauthorized"


class ForbiddenError(LinkflowError):
    """A valid key whose role does not allow the request (HTTP 403)."""

    error_type = "forbidden"


class RateLimitedError(LinkflowError):
    """Over a rate limit (HTTP 429); ``Retry-After`` says in how many seconds to come back."""

    error_type = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"type", "message"}}`` with a 4xx status."""
    try:
        return await handler(request)
    except LinkflowError as exc:
        status = STATUS.get(exc.error_type, 400)
        headers = {"WWW-Authenticate": 'Bearer realm="linkflow"'} if status == 401 else None
        if isinstance(exc, RateLimitedError | TooManyRequestsError):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_seconds)))}
        return web.json_response(error_body(exc.error_type, exc.message), status=status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http")
        return web.json_response(error_body(kind, exc.reason), status=exc.status)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(error_body("internal", "internal error; see the engine log"), status=500)


async def acknowledged(
    sending: Awaitable[None], what: str, hint: str = "try again", *, overdue: Overdue
) -> None:
    """Await a send to Kafka for at most ``ACK_SECONDS``; one not acknowledged by then, or that
    failed, is a 503 the client may retry (``what`` names it, ``hint`` says what to do). While
    ``overdue`` is full the send is not made, and the 503 says so (of a request that sends more
    than one record, the earlier ones may have been sent: the message names the one refused)."""
    try:
        await acknowledged_within(sending, ACK_SECONDS, overdue)
    except Backlogged as exc:
        log.warning("%s refused unsent: %s", what, exc)
        raise UnavailableError(
            f"{what} was not sent: Kafka has not acknowledged {exc.overdue} earlier sends of this "
            "engine (is the broker away? see /readyz); try again later",
            retryable=True,
        ) from exc
    except Exception as exc:
        log.warning("%s not acknowledged by Kafka: %r", what, exc)
        raise UnavailableError(f"{what} was not acknowledged by Kafka; {hint}", retryable=True) from exc
