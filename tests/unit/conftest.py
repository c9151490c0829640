"""Shared factories for the unit tests: workflows, inputs and a harness that runs the decider.

The factories live on one session-scoped ``lf`` object so that hypothesis tests (which refuse
function-scoped fixtures) can use them as well as plain tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, Input, NodeKind, decide
from linkflow_stream.core.events import Dispatch, ExecutionEvent
from linkflow_stream.core.messages import (
    CommandKind,
    ExecutionCommand,
    NodeError,
    NodeResult,
    Priority,
    StartExecution,
)
from linkflow_stream.core.state import ExecutionState, Timer, TimerKind, evolve
from linkflow_stream.core.workflow import NodeDefinition, RetryPolicy, WorkflowDefinition

T0_MILLIS = 1_700_000_000_000
"""2023-11-14T22:13:20Z: every test clock starts here."""

LEASE_GRACE = 5.0
HTTP_TIMEOUT = 30.0

CONFIG = DeciderConfig(
    kinds={
        "transform": NodeKind(Dispatch.INLINE),
        "condition": NodeKind(Dispatch.INLINE),
        "wait": NodeKind(Dispatch.TIMER),
        "http": NodeKind(Dispatch.TASK, HTTP_TIMEOUT),
    },
    lease_grace_seconds=LEASE_GRACE,
)

DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "transform": {"expression": "input.x + 1"},
    "condition": {"expression": "nodes.a > 10"},
    "wait": {"seconds": 1.5},
    "http": {"url": "https://example.com/hook", "method": "POST"},
}


def at(seconds: float = 0.0) -> datetime:
    """The test clock ``seconds`` after T0, at the millisecond precision of the wire."""
    return from_millis(T0_MILLIS + round(seconds * 1000))


@dataclass
class Run:
    """One execution driven through ``decide``; its state is the ``evolve`` fold of the events."""

    config: DeciderConfig
    execution_id: str = "e1"
    state: ExecutionState | None = None
    log: list[ExecutionEvent] = field(default_factory=list)
    inputs: list[tuple[Input, datetime]] = field(default_factory=list)

    def feed(self, inp: Input, now: datetime) -> list[ExecutionEvent]:
        events = decide(self.state, inp, now, self.config)
        for event in events:
            self.state = evolve(self.state, event)
        self.log.extend(events)
        self.inputs.append((inp, now))
        return events

    @property
    def s(self) -> ExecutionState:
        assert self.state is not None, "the execution was never created"
        return self.state


class Factories:
    """Builders for definitions, inputs and runs, with the defaults the unit tests share."""

    config = CONFIG
    at = staticmethod(at)
    HTTP_TIMEOUT = HTTP_TIMEOUT
    LEASE_GRACE = LEASE_GRACE

    @staticmethod
    def node(
        node_id: str,
        type_: str = "transform",
        depends_on: Iterable[str] = (),
        config: dict[str, Any] | None = None,
        **extra: Any,
    ) -> NodeDefinition:
        cfg = dict(DEFAULT_CONFIGS[type_]) if config is None else config
        return NodeDefinition(id=node_id, type=type_, depends_on=tuple(depends_on), config=cfg, **extra)

    @staticmethod
    def workflow(
        *nodes: NodeDefinition, timeout_seconds: float | None = None, workflow_id: str = "wf1"
    ) -> WorkflowDefinition:
        return WorkflowDefinition(
            id=workflow_id, nodes=nodes, timeout_seconds=timeout_seconds, created_at=at(-3600)
        )

    @staticmethod
    def start(
        wf: WorkflowDefinition,
        execution_id: str = "e1",
        input_: Any = None,
        priority: Priority = Priority.NORMAL,
    ) -> StartExecution:
        return StartExecution(
            execution_id=execution_id,
            workflow=wf,
            input={"x": 1} if input_ is None else input_,
            priority=priority,
            requested_at=at(),
        )

    @staticmethod
    def ok(node_id: str, attempt: int = 1, output: Any = None, execution_id: str = "e1") -> NodeResult:
        return NodeResult(
            execution_id=execution_id,
            node_id=node_id,
            attempt=attempt,
            ok=True,
            output=output,
            started_at=at(),
            finished_at=at(),
        )

    @staticmethod
    def fail(
        node_id: str,
        attempt: int = 1,
        error_class: str = "http_5xx",
        *,
        retryable: bool = False,
        with_error: bool = True,
        execution_id: str = "e1",
    ) -> NodeResult:
        error = NodeError(error_class=error_class, message=f"{node_id} broke", retryable=retryable)
        return NodeResult(
            execution_id=execution_id,
            node_id=node_id,
            attempt=attempt,
            ok=False,
            error=error if with_error else None,
            started_at=at(),
            finished_at=at(),
        )

    @staticmethod
    def fire(timer_id: str, execution_id: str = "e1", due_at: datetime | None = None) -> ExecutionCommand:
        """A timer firing; ``due_at`` names the due time it is for (``None``, as older producers send)."""
        return ExecutionCommand(
            execution_id=execution_id, kind=CommandKind.TIMER_FIRED, timer_id=timer_id, due_at=due_at
        )

    @staticmethod
    def timer_id(kind: TimerKind, node_id: str | None = None, attempt: int | None = None) -> str:
        return Timer.make_id(kind, node_id, attempt)

    @staticmethod
    def cancel(reason: str | None = None, execution_id: str = "e1") -> ExecutionCommand:
        return ExecutionCommand(execution_id=execution_id, kind=CommandKind.CANCEL, reason=reason)

    @staticmethod
    def retry(
        max_attempts: int = 3, initial: float = 2.0, multiplier: float = 3.0, max_delay: float = 60.0
    ) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=max_attempts,
            initial_delay_seconds=initial,
            multiplier=multiplier,
            max_delay_seconds=max_delay,
        )

    def run(
        self,
        wf: WorkflowDefinition | None = None,
        config: DeciderConfig | None = None,
        now: datetime | None = None,
    ) -> Run:
        """A run; started with ``wf`` at ``now`` (default T0) when ``wf`` is given."""
        r = Run(config or self.config)
        if wf is not None:
            r.feed(self.start(wf), now or at())
        return r


@pytest.fixture(scope="session")
def lf() -> Factories:
    return Factories()
