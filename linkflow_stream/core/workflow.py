"""Workflow definitions: the DAG a run executes, as registered and as snapshotted per run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RetryPolicy(BaseModel):
    """Exponential backoff for retryable node failures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_delay_seconds: float = Field(default=1.0, ge=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1, le=100)
    max_delay_seconds: float = Field(default=60.0, ge=0, le=86_400)

    def schedule(self) -> list[float]:
        """Seconds waited before each retry (attempt 2, 3, ...)."""
        return [round(self.delay(attempt), 3) for attempt in range(1, self.max_attempts)]

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
        return float(
            min(self.max_delay_seconds, self.initial_delay_seconds * self.multiplier ** (attempt - 1))
        )


class NodeDefinition(BaseModel):
    """One node of a workflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    type: str
    depends_on: tuple[str, ...] = ()
    config: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0, le=86_400)
    retry: RetryPolicy | None = None
    pool: str = Field(default="default", pattern=r"^[a-z0-9-]{1,32}$")
    input: dict[str, str] | None = None
    """Config keys computed at dispatch: key -> JSONata over ``{input, nodes}``."""
    output: str | None = None
    """JSONata over ``{output, input, nodes}``; its result becomes the node's output."""


class Concurrency(BaseModel):
    """At most ``max`` runs of the workflow running at once, per value of ``key`` (ADR 0030)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max: int = Field(ge=1, le=100_000)
    key: str | None = Field(default=None, min_length=1, max_length=1000)
    """JSONata over the run's input; runs whose key has the same value share the ``max`` slots.
    ``None``: all runs of the workflow share them."""


class WorkflowDefinition(BaseModel):
    """One version of a workflow, as stored on ``linkflow.workflows``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    version: int = 1
    name: str = ""
    timeout_seconds: float | None = Field(default=None, gt=0, le=30 * 86_400)
    nodes: tuple[NodeDefinition, ...]
    created_at: datetime
    retry: RetryPolicy | None = None
    """Default retry policy of nodes that set none."""
    team: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The team that owns the workflow; cost reports aggregate by it."""
    concurrency: Concurrency | None = None
    """A limit on the workflow's runs running at once; the rest wait ``queued`` (ADR 0030)."""

    def retry_policy(self, node: NodeDefinition) -> RetryPolicy | None:
        """The policy that governs ``node``: its own, else the workflow's."""
        return node.retry or self.retry

    def node(self, node_id: str) -> NodeDefinition:
        """The node with this id (which validation guaranteed exists)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


@dataclass(frozen=True, slots=True)
class Dependency:
    """A parsed ``depends_on`` entry: ``"a"`` or a condition branch ``"c:true"``."""

    node: str
    branch: bool | None = None

    @classmethod
    def parse(cls, text: str) -> Dependency:
        node, sep, branch = text.partition(":")
        if not sep:
            return cls(node)
        if branch not in ("true", "false"):
            msg = f"dependency {text!r}: a branch must be ':true' or ':false'"
            raise ValueError(msg)
        return cls(node, branch == "true")
