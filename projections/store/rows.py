"""What the read model stores: one row per execution, its log lines, its nodes' network use, and
the log positions folded so far. Plain values, so every backend writes the same thing.

A row carries the execution's ``seq`` (the last event folded into it). Writes only ever replace
a row with one of a higher ``seq``, and lines and node rows are keyed by what produced them, so
writing the same batch twice (a crash between the database commit and the reader's progress, or
two instances sharing one PostgreSQL) changes nothing.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from linkflow_stream.core.errors import ValidationError


@dataclass(frozen=True)
class ExecutionRow:
    id: str
    workflow_id: str
    workflow_version: int
    team: str
    """The workflow's team, ``""`` when it names none (a column that indexes and groups)."""
    status: str
    priority: str
    created_ms: int
    finished_ms: int | None
    seq: int
    """Events folded in; 0 for a run accepted but not started (no event yet)."""
    state: bytes
    """The execution's state, encoded by the codec (``io.linkflow.ExecutionState``)."""
    body: str
    """Its ``GET /api/executions/{id}`` body as JSON, rendered when stored, so a page of runs is
    served without decoding a state (a decode costs about 1 ms)."""
    summary: str
    """The body without the run's data (``projections.status.summary``): what a page of runs
    with ``?view=summary`` serves, a few hundred bytes whatever the run's input and outputs."""
    total_cost: float
    attempts: int
    retries: int
    network_bytes: int
    cost_attempts: float
    cost_events: float
    cost_compute: float
    cost_cpu: float
    cost_network: float
    linked_to: str | None = None
    """The run this one links to (``projections.status.REVERSE_LINKS``): what it reruns, its
    parent, ...; indexed so the linked run's body can list it."""
    link_kind: str | None = None
    """Which link ``linked_to`` is (``rerun_of``, ``parent``, ...)."""


@dataclass(frozen=True)
class LineRow:
    execution_id: str
    seq: int
    """The event that produced the line."""
    n: int
    """Its place among that event's lines."""
    at: str
    level: int
    """Index into ``projections.logs.LEVELS``, so "this level or above" is a comparison."""
    node_id: str | None
    message: str
    data: str | None
    """JSON, or ``None``."""


@dataclass(frozen=True)
class NodeNetworkRow:
    """A node's bytes over the network in one run; only nodes that moved any get a row."""

    execution_id: str
    node_id: str
    workflow_id: str
    team: str
    created_ms: int
    seq: int
    network_bytes: int


Position = tuple[str, int]
"""(topic, partition)"""


@dataclass
class Changes:
    """One database transaction: rows, lines, node rows and the positions they bring us to."""

    executions: dict[str, ExecutionRow] = field(default_factory=dict)
    lines: list[LineRow] = field(default_factory=list)
    node_network: list[NodeNetworkRow] = field(default_factory=list)
    positions: dict[Position, int] = field(default_factory=dict)
    """Next offset to read per (topic, partition)."""

    def __bool__(self) -> bool:
        return bool(self.executions or self.lines or self.node_network or self.positions)


@dataclass(frozen=True)
class Cursor:
    """Where a page of ``GET /api/executions`` ended: the last row's creation time and id."""

    created_ms: int
    id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.created_ms}:{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        refused = ValidationError("cursor is not one this API gave out (use next_cursor as is)")
        try:
            created, _, execution_id = (
                base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition(":")
            )
            created_ms = int(created)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise refused from exc
        if not execution_id or not 0 <= created_ms < 2**63:  # beyond a 64-bit column: not ours
            raise refused
        return cls(created_ms, execution_id)


@dataclass(frozen=True)
class ExecutionQuery:
    """Filters of ``GET /api/executions``; every one is served by an index on (column, created)."""

    status: str | None = None
    workflow_id: str | None = None
    team: str | None = None
    priority: str | None = None
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    after: Cursor | None = None
    limit: int = 50
    summary: bool = False
    """Serve each run's summary instead of its whole body (``?view=summary``)."""


@dataclass(frozen=True)
class CostGroup:
    """The sums of a cost report's group, computed by the database."""

    key: str
    executions: int
    failed: int
    total_cost: float
    attempts: int
    retries: int
    network_bytes: int
    breakdown: dict[str, float]
    top_network_node: tuple[str, int] | None = None
