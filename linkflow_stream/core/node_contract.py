"""The node executor interface that every node type implements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.messages import NodeError

# Failure classes and whether trying again can help.
RETRYABLE_CLASSES = {
    "timeout": True,
    "connection": True,
    "http_429": True,
    "http_5xx": True,
    "lease_expired": True,
    "circuit_open": True,
    "http_4xx": False,
    "validation": False,
    "expression_error": False,
    "code_error": False,
    "resource_limit": False,
    "cancelled": False,
}


def retry_on_problems(retry_on: tuple[str, ...] | None) -> list[str]:
    """What is wrong with a retry policy's ``retry_on``: a class no node fails with, or one that is
    never retried (``retry_on`` picks among the retryable classes; it cannot make others retry)."""
    problems = []
    for error_class in retry_on or ():
        if error_class not in RETRYABLE_CLASSES:
            known = ", ".join(sorted(RETRYABLE_CLASSES))
            problems.append(f"retry_on: {error_class!r} is not a failure class (one of: {known})")
        elif not RETRYABLE_CLASSES[error_class]:
            retryable = ", ".join(sorted(k for k, v in RETRYABLE_CLASSES.items() if v))
            problems.append(f"retry_on: {error_class!r} is never retried (retryable classes: {retryable})")
    return problems


class NodeFailure(LinkflowError):
    """A node attempt failed; ``error_type`` is its failure class."""

    def __init__(self, error_class: str, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(
            message,
            error_type=error_class,
            retryable=RETRYABLE_CLASSES.get(error_class, False) if retryable is None else retryable,
        )

    def to_error(self) -> NodeError:
        return NodeError(error_class=self.error_type, message=self.message, retryable=self.retryable)


class ConfigError(LinkflowError):
    """A node config that can never run; names the field so registration can say what is wrong."""

    error_type = "validation"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config.{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class NodeContext:
    """Who is running: used for idempotency keys, logs and cancellation. Executors add resource
    counts (bytes sent and received, CPU seconds) to ``usage`` for cost tracking."""

    execution_id: str
    workflow_id: str
    node_id: str
    attempt: int
    timeout_seconds: float
    usage: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    """What the attempt printed (``stdout``, ``stderr``), for the execution's record."""
    now: datetime | None = None
    """The time of the input record the attempt runs for; JSONata's ``$now()`` and ``$millis()``
    return it, so evaluating again gives the same result. Default ``None``: the clock when the
    evaluation starts."""
    seed: str | None = None
    """Seed of JSONata's ``$random()``, e.g. the attempt's idempotency key, so evaluating again
    draws the same numbers. Default ``None``: unseeded."""

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}/{self.node_id}/{self.attempt}"


class NodeExecutor(Protocol):
    """One node type. ``validate`` runs at registration, ``execute`` per attempt."""

    type_name: ClassVar[str]
    dispatch: ClassVar[Dispatch]

    @property
    def default_timeout_seconds(self) -> float:
        """Timeout of a node of this type that sets none."""

    def validate(self, config: dict[str, Any]) -> None:
        """Raise ``ConfigError`` for config that can never run."""

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        """Run one attempt over ``data`` (``{"input", "nodes"}``); raise ``NodeFailure`` on failure."""


def capped_output(output: Any, max_bytes: int) -> Any:
    """``output``, or ``resource_limit`` when its JSON is over ``max_bytes``: one rule for task
    outputs (the executor) and inline outputs (the orchestrator's step)."""
    size = len(json.dumps(output, separators=(",", ":"), default=str))
    if size > max_bytes:
        raise NodeFailure(
            "resource_limit",
            f"output of {size} bytes is over the {max_bytes}-byte limit (LINKFLOW_NODE_OUTPUT_MAX_BYTES)",
        )
    return output
