"""The one root error of LinkFlow Stream; every error says whether retrying can help."""

from __future__ import annotations


class LinkflowError(Exception):
    """Root of every LinkFlow error.

    ``error_type`` is the class a client or the retry logic reads; ``retryable`` says whether
    the same work may succeed if tried again.
    """

    error_type: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, error_type: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type
        if retryable is not None:
            self.retryable = retryable


class ValidationError(LinkflowError):
    """Input that can never be accepted as it is (HTTP 400)."""

    error_type = "validation"


class NotFoundError(LinkflowError):
    """A workflow or execution that does not exist (HTTP 404)."""

    error_type = "not_found"


class ConflictError(LinkflowError):
    """A request that contradicts the current state, e.g. cancelling a finished run (HTTP 409)."""

    error_type = "conflict"
