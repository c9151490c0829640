"""Workflow definitions: the DAG a run executes, as registered and as snapshotted per run."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from linkflow_stream.core.identity_memo import IdentityMemo
from linkflow_stream.core.rate_limit import RateLimit

MAX_TIMEOUT_SECONDS = 30 * 86_400.0
"""The longest time budget a run can have: a workflow's ``timeout_seconds``, or one set while it
runs (``set_timeout``, ``PUT /api/executions/{id}/timeout``)."""
NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RetryPolicy(BaseModel):
    """Exponential backoff for retryable node failures, with optional jitter and a class filter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_delay_seconds: float = Field(default=1.0, ge=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1, le=100)
    max_delay_seconds: float = Field(default=60.0, ge=0, le=86_400)
    jitter: float = Field(default=0.0, ge=0, le=1)
    """Up to this fraction of each delay is taken off, by an amount derived from the execution,
    node and attempt (:func:`jitter_fraction`), so retries of many runs spread out and a replay
    waits the same. 0 (the default): the exact schedule; 1: anywhere from 0 to the delay."""
    retry_on: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=32, strict=False)
    """The failure classes that are retried (of the retryable ones); ``None`` (the default): every
    retryable class. ``core.node_contract.retry_on_problems`` names the classes it may list."""

    @field_serializer("retry_on")
    def _retry_on_as_list(self, retry_on: tuple[str, ...] | None) -> list[str] | None:
        """Dumped as a list: Avro writers read a tuple in a union as ``(branch, value)``."""
        return None if retry_on is None else list(retry_on)

    def schedule(self) -> list[float]:
        """Seconds waited before each retry (attempt 2, 3, ...), before jitter."""
        return [round(self.delay(attempt), 3) for attempt in range(1, self.max_attempts)]

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` failed
        (the backoff, before jitter)."""
        return float(
            min(self.max_delay_seconds, self.initial_delay_seconds * self.multiplier ** (attempt - 1))
        )

    def retry_delay(self, attempt: int, execution_id: str, node_id: str) -> float:
        """The backoff of ``attempt`` with its jitter: within ``[delay * (1 - jitter), delay]``,
        the same for the same execution, node and attempt wherever and whenever it is computed."""
        if not self.jitter:
            return self.delay(attempt)
        return self.delay(attempt) * (1.0 - self.jitter * jitter_fraction(execution_id, node_id, attempt))

    def would_retry(self, error_class: str, retryable: bool, attempt: int) -> bool:
        """Whether a failure of ``error_class`` in ``attempt`` is tried again under this policy:
        the one rule of the decider and of the API's dry run."""
        if not retryable or attempt >= self.max_attempts:
            return False
        return self.retry_on is None or error_class in self.retry_on


def jitter_fraction(execution_id: str, node_id: str, attempt: int) -> float:
    """A number in ``[0, 1)`` fixed by the execution, node and attempt (SHA-256 of them): the
    decider's jitter, never drawn from a random source, so deciding again gives the same delay."""
    digest = hashlib.sha256(f"{execution_id}\x00{node_id}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
    rate_limit: RateLimit | None = None
    """http and db nodes: a token bucket on the node's outgoing calls; a call over it waits (a
    durable timer, no worker slot) and never fails for it. Default ``None``: no limit."""


class OnFailure(BaseModel):
    """The error workflow of a workflow (ADR 0036)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_id: str = Field(pattern=NODE_ID.pattern)


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
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    nodes: tuple[NodeDefinition, ...]
    created_at: datetime
    retry: RetryPolicy | None = None
    """Default retry policy of nodes that set none."""
    team: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The team that owns the workflow; cost reports aggregate by it."""
    on_failure: OnFailure | None = None
    """The workflow that starts, once, when a run of this one fails or times out (ADR 0036)."""
    concurrency: Concurrency | None = None
    """A limit on the workflow's runs running at once; the rest wait ``queued`` (ADR 0030)."""

    def retry_policy(self, node: NodeDefinition) -> RetryPolicy | None:
        """The policy that governs ``node``: its own, else the workflow's."""
        return node.retry or self.retry

    def node(self, node_id: str) -> NodeDefinition:
        """The node with this id (which validation guaranteed exists). By an index built once
        per definition object: a scan made views that look up every node O(n²) per run."""
        return _node_index(self)[node_id]


def same_definition(a: WorkflowDefinition, b: WorkflowDefinition) -> bool:
    """Whether two versions define the same workflow: everything but the number and the time the
    engine stamps on each. Compared as JSON text with sorted keys: ``true`` and ``1`` differ as
    they do to a run, ``NaN`` is not ``null``, and the order of an object's keys does not count."""
    return _definition_text(a) == _definition_text(b)


def _definition_text(wf: WorkflowDefinition) -> str:
    return json.dumps(wf.model_dump(exclude={"version", "created_at"}), sort_keys=True, default=str)


_node_index: IdentityMemo[WorkflowDefinition, dict[str, NodeDefinition]] = IdentityMemo(
    lambda workflow: {n.id: n for n in workflow.nodes}, limit=65_536
)
"""Node indexes by definition object, for as long as the object lives (ADR 0070): the runs in
flight share a few definitions, and a definition no longer used takes its index with it (a bound
by count alone kept up to a thousand definitions alive, at up to a megabyte each). Not a cached
property: ``model_copy`` copies an instance's ``__dict__``, so a copy with other nodes would find
the original's index."""


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
