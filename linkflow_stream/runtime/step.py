"""The orchestrator's step: one input in, the new state and everything to publish out.

The decider decides; this step adds what the decider must not do itself: it evaluates inline
nodes (transform, condition), feeding their results straight back into the decider, and turns
started task nodes into ``NodeTask`` records and cancellations into control messages. No I/O
happens here; the orchestrator commits the outputs and the new state in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from linkflow_stream.core import topic_names
from linkflow_stream.core.decider import DeciderConfig, Input, decide_evolved
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.expressions import evaluate
from linkflow_stream.core.gate import GateRequest, GateRequestKind
from linkflow_stream.core.inline_attempts import merge
from linkflow_stream.core.mapping import map_output, rate_limit_bucket, resolve_config
from linkflow_stream.core.messages import CommandKind, ControlMessage, ExecutionCommand, NodeResult, NodeTask
from linkflow_stream.core.node_contract import (
    ConfigError,
    NodeContext,
    NodeExecutor,
    NodeFailure,
    capped_output,
)
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.run_links import (
    DEPTH,
    MAX_DEPTH,
    PARENT,
    PARENT_ATTEMPT,
    PARENT_NODE,
    child_depth,
    child_run_id,
    error_workflow_request,
    parent_result,
)
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.trace_context import TRACEPARENT
from linkflow_stream.core.workflow import NodeDefinition
from linkflow_stream.nodes.expression_worker import evaluate_bounded

MAX_INLINE_STEPS = 10_000


@dataclass
class Step:
    state: ExecutionState | None
    events: list[ExecutionEvent] = field(default_factory=list)
    outputs: list[Outgoing] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.events)


class Stepper:
    """Runs the decider over one input, with inline nodes evaluated and tasks built."""

    def __init__(
        self,
        registry: Mapping[str, NodeExecutor],
        config: DeciderConfig,
        pool_exists: Callable[[str], Awaitable[bool]] | None = None,
        output_max_bytes: int = 1024 * 1024,
        task_traceparent: Callable[[ExecutionState, str, int], str] | None = None,
        merge_inline: bool = True,
    ) -> None:
        self.registry = registry
        self.merge_inline = merge_inline
        """Whether an inline attempt is written as one event (ADR 0056; ``merge_inline_attempts``)."""
        self.task_traceparent = task_traceparent
        """The ``traceparent`` a task carries in its headers, from (state, node id, attempt): the
        context of the attempt's span, derived, so deciding again writes the same header.
        ``None``: tracing is off and tasks carry none."""
        self.config = config
        self.pool_exists = pool_exists
        """Whether a pool's task topic exists: a task for a pool without one fails its node."""
        self.output_max_bytes = output_max_bytes
        """The cap on an inline node's output, as the executor caps a task's."""

    async def step(self, state: ExecutionState | None, inp: Input, now: datetime) -> Step:
        step = Step(state)
        queue: list[Input] = [self._map_result(state, inp)]
        cancelled = False
        while queue:
            if len(step.events) > MAX_INLINE_STEPS:  # pragma: no cover - a DAG cannot loop; belt and braces
                break
            current = queue.pop(0)
            for event, after in decide_evolved(step.state, current, now, self.config):
                step.state = after
                step.events.append(event)
                if event.type is EventType.NODE_STARTED and event.dispatch is Dispatch.INLINE:
                    queue.append(await self._run_inline(step.state, event, now))
                elif event.type is EventType.NODE_STARTED and event.dispatch is Dispatch.CHILD:
                    child_or_failure = await self._child(step.state, event, now)
                    if isinstance(child_or_failure, NodeResult):
                        queue.append(child_or_failure)
                    else:
                        step.outputs.append(child_or_failure)
                elif event.type is EventType.NODE_STARTED and event.dispatch is Dispatch.TASK:
                    task_or_failure = await self._task(step.state, event, now)
                    if isinstance(task_or_failure, NodeResult):
                        queue.append(task_or_failure)
                    else:
                        step.outputs.append(task_or_failure)
                cancelled = cancelled or event.type is EventType.NODE_CANCELLED
                step.outputs.extend(_linked_runs(step.state, event))
                step.outputs.extend(self._child_cancels(step.state, event, current))
                gate = _gate_request(step.state, event)
                if gate is not None:
                    step.outputs.append(gate)
        _merge_inline_attempts(step, self.merge_inline)
        if cancelled and step.state is not None:
            reason = step.state.history[-1].reason or "cancelled"
            step.outputs.append(
                Outgoing(
                    topic_names.CONTROL,
                    step.state.id,
                    ControlMessage(execution_id=step.state.id, reason=reason),
                    "io.linkflow.control.cancel",
                )
            )
        return step

    def _timeout(self, node: NodeDefinition) -> float:
        return node.timeout_seconds or self.config.kind(node.type).default_timeout_seconds

    def _config(
        self,
        node: NodeDefinition,
        data: dict[str, Any],
        *,
        now: datetime | None = None,
        seed: str | None = None,
    ) -> dict[str, Any]:
        """The config this attempt runs with: mapped keys computed, then checked like at registration.
        ``now`` and ``seed`` make ``$now()``, ``$millis()`` and ``$random()`` in the mapping repeatable."""
        config = resolve_config(node, data, now=now, seed=seed)
        if node.input:
            try:
                self.registry[node.type].validate(config)
            except ConfigError as exc:
                raise NodeFailure("validation", f"after input mapping, {exc.message}") from exc
        return config

    def _map_result(self, state: ExecutionState | None, inp: Input) -> Input:
        """Apply the node's output mapping to a task's successful result. Its ``$now()`` is the
        result's ``finished_at`` (as for an inline node, whose result time is the step's time) and
        its ``$random()`` is seeded by the attempt, so processing the result again agrees."""
        if state is None or not isinstance(inp, NodeResult) or not inp.ok or inp.node_id not in state.nodes:
            return inp
        node = state.workflow.node(inp.node_id)
        if node.output is None:
            return inp
        try:
            output = map_output(
                node,
                inp.output,
                state.node_inputs(),
                now=inp.finished_at,
                seed=f"{inp.execution_id}/{inp.node_id}/{inp.attempt}",
            )
            return inp.model_copy(update={"output": output})
        except NodeFailure as exc:
            return inp.model_copy(update={"ok": False, "output": None, "error": exc.to_error()})

    async def _task(
        self, state: ExecutionState, event: ExecutionEvent, now: datetime
    ) -> Outgoing | NodeResult:
        """The task for an executor, or the failure to feed back when its config cannot be built."""
        assert event.node_id is not None
        assert event.attempt is not None
        assert event.due_at is not None
        node = state.workflow.node(event.node_id)
        data = state.node_inputs()
        if self.pool_exists is not None and not await self.pool_exists(node.pool):
            missing = NodeFailure(
                "resource_limit",
                f"pool {node.pool!r} is not declared or has no task topic "
                f"{topic_names.tasks(node.pool, state.priority)}",
            )
            return _result(state, event, now, error=missing)
        try:
            config = self._config(node, data, now=now, seed=f"{state.id}/{node.id}/{event.attempt}")
            bucket = rate_limit_bucket(
                state.workflow.id, node, data, now=now, seed=f"{state.id}/{node.id}/{event.attempt}"
            )
        except NodeFailure as exc:
            return _result(state, event, now, error=exc)
        task = NodeTask(
            execution_id=state.id,
            workflow_id=state.workflow.id,
            node_id=node.id,
            attempt=event.attempt,
            node_type=node.type,
            config=config,
            input=data if reads_data(self.registry[node.type]) else {"input": None, "nodes": {}},
            timeout_seconds=self._timeout(node),
            lease_until=event.due_at,
            rate_limit=bucket,
        )
        headers: tuple[tuple[str, bytes], ...] = ()
        if self.task_traceparent is not None:
            headers = ((TRACEPARENT, self.task_traceparent(state, node.id, event.attempt).encode()),)
        return Outgoing(
            topic_names.tasks(node.pool, state.priority),  # the run's priority orders it at the executor
            state.id,
            task,
            "io.linkflow.node.task",
            ce_id=f"{state.id}/{node.id}/{event.attempt}",
            time=event.at,
            headers=headers,
        )

    async def _child(
        self, state: ExecutionState, event: ExecutionEvent, now: datetime
    ) -> Outgoing | NodeResult:
        """The start of a ``workflow`` node's child run (ADR 0036), or the failure to feed back
        when its config or input cannot be computed. The child's id is fixed by (run, node,
        attempt), so deciding again writes the same request and the intake starts it once."""
        assert event.node_id is not None
        assert event.attempt is not None
        node = state.workflow.node(event.node_id)
        data = state.node_inputs()
        seed = f"{state.id}/{node.id}/{event.attempt}"
        depth = child_depth(state)
        if depth > MAX_DEPTH:
            too_deep = NodeFailure(
                "validation",
                f"sub-workflows nest deeper than {MAX_DEPTH}: a loop of workflows calling each other?",
            )
            return _result(state, event, now, error=too_deep)
        try:
            config = self._config(node, data, now=now, seed=seed)
            expression = config.get("input")
            child_input = (
                await evaluate_bounded(expression, data, timeout_seconds=INPUT_SECONDS, now=now, seed=seed)
                if isinstance(expression, str)
                else {}
            )
        except NodeFailure as exc:
            return _result(state, event, now, error=exc)
        child_id = child_run_id(state.id, node.id, event.attempt)
        request = StartRequest(
            workflow_id=config["workflow_id"],
            workflow_version=config.get("version"),
            input=child_input,
            priority=state.priority,
            execution_id=child_id,
            links={
                PARENT: state.id,
                PARENT_NODE: node.id,
                PARENT_ATTEMPT: str(event.attempt),
                DEPTH: str(depth),
            },
        )
        return Outgoing(topic_names.START, child_id, request, CHILD_REQUESTED, ce_id=child_id, time=event.at)

    def _child_cancels(
        self, state: ExecutionState | None, event: ExecutionEvent, inp: Input
    ) -> list[Outgoing]:
        """A CANCEL for the child run of a ``workflow`` node that stops waiting for it (the
        parent cancelled or failed elsewhere, the node timed out). Not when the child's own
        result ended the node: the child has ended already."""
        if state is None or event.node_id is None or event.type not in _NODE_LEFT:
            return []
        node = state.workflow.node(event.node_id)
        if self.config.kind(node.type).dispatch is not Dispatch.CHILD:
            return []
        attempt = event.attempt or state.nodes[node.id].attempts
        if attempt < 1 or (isinstance(inp, NodeResult) and inp.node_id == node.id and inp.attempt == attempt):
            return []
        child_id = child_run_id(state.id, node.id, attempt)
        command = ExecutionCommand(
            execution_id=child_id,
            kind=CommandKind.CANCEL,
            reason=f"parent {state.id} node {node.id}: {event.reason or event.type.value}",
        )
        return [
            Outgoing(
                topic_names.COMMANDS,
                child_id,
                command,
                CHILD_CANCEL,
                # no seq (ADR 0056 numbers seqs again); a child may be cancelled as its node
                # retries, then again as the parent is cancelled: one id for each
                ce_id=f"{child_id}/cancel/{event.type.value}",
                time=event.at,
            )
        ]

    async def _run_inline(self, state: ExecutionState, event: ExecutionEvent, now: datetime) -> NodeResult:
        assert event.node_id is not None
        assert event.attempt is not None
        node = state.workflow.node(event.node_id)
        # The input record's time and the attempt make every evaluation repeatable (ADR 0015).
        seed = f"{state.id}/{node.id}/{event.attempt}"
        ctx = NodeContext(
            state.id, state.workflow.id, node.id, event.attempt, self._timeout(node), now=now, seed=seed
        )
        data = state.node_inputs()
        try:
            config = self._config(node, data, now=now, seed=seed)
            output = map_output(
                node, await self.registry[node.type].execute(ctx, config, data), data, now=now, seed=seed
            )
            return _result(state, event, now, output=capped_output(output, self.output_max_bytes))
        except NodeFailure as exc:
            return _result(state, event, now, error=exc)


def reads_data(executor: NodeExecutor) -> bool:
    """Whether a node type's ``execute`` reads its ``data`` (the run's input and every finished
    node's output). Types that read only their config (``reads_data = False``: http, db) get
    tasks without it: otherwise each task of a run carries all outputs before it, and a run's
    task bytes grow with the square of its size (ADR 0039). Unknown: it reads it."""
    return bool(getattr(executor, "reads_data", True))


def _result(
    state: ExecutionState,
    event: ExecutionEvent,
    now: datetime,
    *,
    output: Any = None,
    error: NodeFailure | None = None,
) -> NodeResult:
    assert event.node_id is not None
    assert event.attempt is not None
    return NodeResult(
        execution_id=state.id,
        node_id=event.node_id,
        attempt=event.attempt,
        ok=error is None,
        output=output,
        error=error.to_error() if error else None,
        started_at=now,
        finished_at=now,
    )


ERROR_WORKFLOW_STARTED = "io.linkflow.execution.error_workflow_requested"


CHILD_REQUESTED = "io.linkflow.execution.child_requested"
CHILD_CANCEL = "io.linkflow.command.cancel"
CHILD_RESULT = "io.linkflow.node.result"
INPUT_SECONDS = 5.0
"""The bound on evaluating a child's ``input`` expression, as a transform's default timeout."""
_NODE_LEFT = frozenset({EventType.NODE_FAILED, EventType.NODE_CANCELLED, EventType.NODE_RETRY_SCHEDULED})
"""Events by which a running node stops waiting for its current attempt."""


def _linked_runs(state: ExecutionState | None, event: ExecutionEvent) -> list[Outgoing]:
    """Records for other runs that ``event`` calls for (ADR 0036): the start of the error
    workflow of a run that failed, and a finished child's result for its parent. Derived from
    the state alone, so deciding again writes the same records, and the fixed execution ids
    make the intake start each run once."""
    if state is None:
        return []
    outputs: list[Outgoing] = []
    if event.type is EventType.EXECUTION_FAILED:
        request = error_workflow_request(state)
        if request is not None and request.execution_id is not None:
            outputs.append(
                Outgoing(
                    topic_names.START,
                    request.execution_id,
                    request,
                    ERROR_WORKFLOW_STARTED,
                    ce_id=request.execution_id,
                    time=event.at,
                )
            )
    if event.type in _RUN_END:
        result = parent_result(state, event.at)
        if result is not None:
            outputs.append(
                Outgoing(
                    topic_names.RESULTS,
                    result.execution_id,
                    result,
                    CHILD_RESULT,
                    ce_id=f"{result.execution_id}/{result.node_id}/{result.attempt}/child",
                    time=event.at,
                )
            )
    return outputs


_RUN_END = frozenset(
    {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
)


def _gate_request(state: ExecutionState, event: ExecutionEvent) -> Outgoing | None:
    """A queued run's request to the gate, and a gated run's release when it ends (ADR 0030)."""
    team = state.workflow.team or ""
    if event.type is EventType.EXECUTION_QUEUED:
        limit = state.workflow.concurrency
        request = GateRequest(
            kind=GateRequestKind.ENQUEUE,
            execution_id=state.id,
            team=team,
            slot=_slot(state, event.at) if limit is not None else "",
            max=limit.max if limit is not None else None,
            requested_at=event.at,
        )
    elif event.type in _RUN_END and state.gated:
        request = GateRequest(
            kind=GateRequestKind.RELEASE, execution_id=state.id, team=team, requested_at=event.at
        )
    else:
        return None
    return Outgoing(
        topic_names.GATE,
        team,
        request,
        f"io.linkflow.gate.{request.kind.value}",
        ce_id=f"{state.id}/gate/{request.kind.value}",  # a run is queued once and released once
        time=event.at,
    )


def _slot(state: ExecutionState, now: datetime) -> str:
    """The workflow id and the value of its concurrency key over the run's input. A key that
    cannot be evaluated counts as undefined: such runs share one slot (ADR 0030)."""
    limit = state.workflow.concurrency
    assert limit is not None
    if limit.key is None:
        return state.workflow.id
    try:
        value = evaluate(limit.key, state.input, now=now, seed=state.id)
    except NodeFailure:
        value = None
    return f"{state.workflow.id}/{json.dumps(value, sort_keys=True, separators=(',', ':'))}"


def _merge_inline_attempts(step: Step, merging: bool) -> None:
    """Write each inline attempt as one event (ADR 0056), and the events before the other records.

    The decider's state already holds every merged attempt as started and ended; only the seq it
    reached moves back, by one for each start folded into its end."""
    events = merge(step.events) if merging else step.events
    if len(events) != len(step.events) and step.state is not None:
        step.state = step.state.model_copy(update={"seq": events[-1].seq})
    step.events = events
    step.outputs[:0] = [_event_record(e) for e in events]


def _event_record(e: ExecutionEvent) -> Outgoing:
    return Outgoing(
        topic_names.EVENTS,
        e.execution_id,
        e,
        f"io.linkflow.execution.{e.type.value}",
        ce_id=f"{e.execution_id}/{e.seq}",
        time=e.at,
    )
