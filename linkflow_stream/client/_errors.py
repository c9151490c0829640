"""What the client raises: one class per kind of answer, mapped from the status and the JSON error
body (``{"error": {"type", "message"}}``) every 4xx of the engine carries.

All are ``LinkflowError`` s with the engine's ``error_type`` and a ``retryable`` flag, so a caller
can retry on the flag alone: only ``Unavailable`` (the engine could not do it now),
``TooManyRequests`` (not now: too many runs queued), ``ServerError`` and ``ConnectionFailed`` (no
answer at all) are retryable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from linkflow_stream.core.errors import LinkflowError


class ClientError(LinkflowError):
    """Root of the client's errors."""


class ConnectionFailed(ClientError):
    """No HTTP answer: the engine is not listening, the connection broke, or the call timed out."""

    error_type = "connection"
    retryable = True


class WaitTimedOut(ClientError):
    """A run did not end within the time a caller chose to wait for it (it may still end later)."""

    error_type = "timeout"
    retryable = True


class ApiError(ClientError):
    """The engine answered with an error status; ``status`` and ``error_type`` say which."""

    def __init__(self, status: int, error_type: str, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message, error_type=error_type, retryable=retryable)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


class ValidationFailed(ApiError):
    """400: the body, a parameter or a header is invalid; the message names the field."""


class Unauthorized(ApiError):
    """401: no key, or one that is unknown or revoked."""


class Forbidden(ApiError):
    """403: the key's role may not do this."""


class NotFound(ApiError):
    """404: no such workflow, execution, key or worker (or another team's)."""


class Conflict(ApiError):
    """409: the request contradicts the current state, e.g. cancelling a run that ended."""


class TooManyRequests(ApiError):
    """429: the engine refused the start for now: the workflow's team is over its start rate
    (``error_type`` ``rate_limited``) or has too many runs queued (``too_many_requests``,
    ``LINKFLOW_MAX_QUEUED_PER_TEAM``); retryable after ``retry_after_seconds`` (the answer's
    ``Retry-After``, ``None`` if it had none)."""

    retryable = True

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(status, error_type, message, retryable=retryable)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(ApiError):
    """503: the engine could not do it now (e.g. Kafka did not acknowledge a start); retryable."""

    retryable = True


class ServerError(ApiError):
    """Any 5xx but 503: the engine failed (it should not; its log says why)."""

    retryable = True


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    503: Unavailable,
}


def error_for(status: int, body: Any, text: str = "", headers: Mapping[str, str] | None = None) -> ApiError:
    """The error for an answer with ``status`` >= 400 and its decoded JSON ``body`` (or ``None``,
    with the raw ``text``); ``headers`` (lower-case names) give a 429 its ``Retry-After``."""
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        error_type = str(detail.get("type") or "http")
        message = str(detail.get("message") or "")
    else:
        error_type, message = "http", (text.strip()[:500] or f"HTTP {status}")
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    if kind is TooManyRequests:
        return TooManyRequests(
            status, error_type, message, retry_after_seconds=_seconds((headers or {}).get("retry-after"))
        )
    return kind(status, error_type, message)


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the engine sends whole seconds; an HTTP date is not read)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
