"""The orchestrator's step: one input in, the new state and everything to publish out.

The decider decides; this step adds what the decider must not do itself: it evaluates inline
nodes (transform, condition), feeding their results straight back into the decider, and turns
started task nodes into ``NodeTask`` records and cancellations into control messages. No I/O
happens here; the agent that calls it publishes the outputs, then stores the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from linkflow_stream import topic_names
from linkflow_stream.decider import DeciderConfig, Input, decide
from linkflow_stream.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.messages import ControlMessage, NodeResult, NodeTask
from linkflow_stream.nodes.base import NodeContext, NodeExecutor, NodeFailure
from linkflow_stream.publisher import Outgoing
from linkflow_stream.state import ExecutionState, evolve

MAX_INLINE_STEPS = 10_000


@dataclass
class Step:
    state: ExecutionState | None
    events: list[ExecutionEvent] = field(default_factory=list)
    outputs: list[Outgoing] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.events)


class Orchestrator:
    def __init__(self, registry: Mapping[str, NodeExecutor], config: DeciderConfig) -> None:
        self.registry = registry
        self.config = config

    async def step(self, state: ExecutionState | None, inp: Input, now: datetime) -> Step:
        step = Step(state)
        queue: list[Input] = [inp]
        while queue:
            if len(step.events) > MAX_INLINE_STEPS:  # pragma: no cover - a DAG cannot loop; belt and braces
                break
            new = decide(step.state, queue.pop(0), now, self.config)
            for event in new:
                step.state = evolve(step.state, event)
                step.events.append(event)
                if event.type is EventType.NODE_STARTED and event.dispatch is Dispatch.INLINE:
                    queue.append(await self._run_inline(step.state, event, now))
        self._outputs(step)
        return step

    async def _run_inline(self, state: ExecutionState, event: ExecutionEvent, now: datetime) -> NodeResult:
        assert event.node_id is not None
        assert event.attempt is not None
        node = state.workflow.node(event.node_id)
        ctx = NodeContext(
            state.id,
            state.workflow.id,
            node.id,
            event.attempt,
            node.timeout_seconds or self.config.kind(node.type).default_timeout_seconds,
        )
        ok, output, error = True, None, None
        try:
            output = await self.registry[node.type].execute(ctx, node.config, state.node_inputs())
        except NodeFailure as exc:
            ok, error = False, exc.to_error()
        return NodeResult(
            execution_id=state.id,
            node_id=node.id,
            attempt=event.attempt,
            ok=ok,
            output=output,
            error=error,
            started_at=now,
            finished_at=now,
        )

    def _outputs(self, step: Step) -> None:
        state = step.state
        if state is None:
            return
        cancelled_tasks = False
        for e in step.events:
            step.outputs.append(
                Outgoing(
                    topic_names.EVENTS,
                    e.execution_id,
                    e,
                    f"io.linkflow.execution.{e.type.value}",
                    ce_id=f"{e.execution_id}/{e.seq}",
                    time=e.at,
                )
            )
            if e.type is EventType.NODE_STARTED and e.dispatch is Dispatch.TASK:
                assert e.node_id is not None
                assert e.attempt is not None
                assert e.due_at is not None
                node = state.workflow.node(e.node_id)
                task = NodeTask(
                    execution_id=state.id,
                    workflow_id=state.workflow.id,
                    node_id=node.id,
                    attempt=e.attempt,
                    node_type=node.type,
                    config=node.config,
                    input=state.node_inputs(),
                    timeout_seconds=node.timeout_seconds
                    or self.config.kind(node.type).default_timeout_seconds,
                    lease_until=e.due_at,
                )
                step.outputs.append(
                    Outgoing(
                        topic_names.tasks(node.pool),
                        state.id,
                        task,
                        "io.linkflow.node.task",
                        ce_id=f"{state.id}/{node.id}/{e.attempt}",
                        time=e.at,
                    )
                )
            if e.type is EventType.NODE_CANCELLED:
                cancelled_tasks = True
        if cancelled_tasks:
            step.outputs.append(
                Outgoing(
                    topic_names.CONTROL,
                    state.id,
                    ControlMessage(execution_id=state.id, reason=state.history[-1].reason or "cancelled"),
                    "io.linkflow.control.cancel",
                )
            )
