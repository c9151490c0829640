"""The status view: every execution's state, folded from ``linkflow.events``.

The fold is ``linkflow_stream.core.state.apply``, the same one the orchestrator uses, so the view
can never disagree with the engine about what an event means. Duplicated events (a seq already
seen) change nothing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, Transition, apply


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def render(state: ExecutionState) -> dict[str, Any]:
    """The ``GET /api/executions/{id}`` body."""
    return {
        "id": state.id,
        "workflow_id": state.workflow.id,
        "workflow_version": state.workflow.version,
        "status": state.status.value,
        "priority": state.priority.value,
        "input_data": state.input,
        "created_at": _iso(state.created_at),
        "started_at": _iso(state.started_at),
        "finished_at": _iso(state.finished_at),
        "deadline_at": _iso(deadline.due_at) if (deadline := state.timers.get("execution_timeout")) else None,
        "nodes": {
            node_id: {
                "status": n.status.value,
                "output": n.output,
                "error": n.error.model_dump() if n.error else None,
                "attempts": n.attempts,
                "started_at": _iso(n.started_at),
                "finished_at": _iso(n.finished_at),
                "usage": n.usage,
                "logs": n.logs,
            }
            for node_id, n in state.nodes.items()
        },
        "history": [
            {
                "from": t.from_status.value if t.from_status else None,
                "to": t.to_status.value,
                "at": _iso(t.at),
                "reason": t.reason,
            }
            for t in state.history
        ],
    }


def render_metrics(state: ExecutionState, now: datetime) -> dict[str, Any]:
    """The ``GET /api/executions/{id}/metrics`` body: timings, attempts and resource use, from the
    execution's state alone (a running execution's durations run up to ``now``)."""

    def seconds(start: datetime | None, end: datetime | None) -> float | None:
        return None if start is None else round(((end or now) - start).total_seconds(), 3)

    usage: dict[str, int] = {}
    by_status: dict[str, int] = {}
    nodes = {}
    for node_id, n in state.nodes.items():
        by_status[n.status.value] = by_status.get(n.status.value, 0) + 1
        for key, amount in (n.usage or {}).items():
            usage[key] = usage.get(key, 0) + amount
        nodes[node_id] = {
            "status": n.status.value,
            "attempts": n.attempts,
            "duration_seconds": seconds(n.started_at, n.finished_at),
            "usage": n.usage or {},
        }
    return {
        "id": state.id,
        "workflow_id": state.workflow.id,
        "status": state.status.value,
        "queue_seconds": seconds(
            state.created_at, state.started_at or (None if state.status.terminal else now)
        ),
        "duration_seconds": seconds(state.started_at, state.finished_at),
        "events": state.seq,
        "attempts": sum(n.attempts for n in state.nodes.values()),
        "retries": sum(max(0, n.attempts - 1) for n in state.nodes.values()),
        "nodes_by_status": by_status,
        "usage": usage,
        "nodes": nodes,
    }


def render_accepted(request: StartExecution) -> dict[str, Any]:
    """What a read shows for an execution accepted here but not yet seen in the log: the pending
    state it will start from."""
    return render(
        ExecutionState(
            id=request.execution_id,
            workflow=request.workflow,
            status=ExecutionStatus.PENDING,
            priority=request.priority,
            input=request.input,
            created_at=request.requested_at,
            seq=0,
            nodes={n.id: NodeState() for n in request.workflow.nodes},
            history=(
                Transition(
                    from_status=None,
                    to_status=ExecutionStatus.PENDING,
                    at=request.requested_at,
                    reason="accepted",
                ),
            ),
        )
    )


Reached = Callable[[ExecutionState], bool]
_Waiter = tuple[Reached, "asyncio.Future[None]"]


class StatusView:
    """Execution states by id, plus waiters for ``?wait=`` callers."""

    def __init__(self) -> None:
        self.executions: dict[str, ExecutionState] = {}
        self.accepted: dict[str, StartExecution] = {}
        self.applied = 0
        self.duplicates = 0
        self._waiters: defaultdict[
            str, list[tuple[Callable[[ExecutionState], bool], asyncio.Future[None]]]
        ] = defaultdict(list)

    def apply(self, event: ExecutionEvent) -> ExecutionState | None:
        before = self.executions.get(event.execution_id)
        after = apply(before, event)
        if after is None:
            return None
        if after is before:
            self.duplicates += 1
            return after
        self.applied += 1
        self.executions[event.execution_id] = after
        self.accepted.pop(event.execution_id, None)
        waiters = self._waiters.get(event.execution_id)
        if waiters:
            for reached, fut in [w for w in waiters if w[0](after)]:
                waiters.remove((reached, fut))
                if not fut.done():
                    fut.set_result(None)
        return after

    def active_count(self) -> int:
        """Executions not yet ended, as this view knows them."""
        return sum(1 for s in self.executions.values() if not s.status.terminal)

    def accept(self, request: StartExecution) -> None:
        """Remember a request this instance accepted, so reading it back at once finds it."""
        if request.execution_id not in self.executions:
            self.accepted[request.execution_id] = request

    def get(self, execution_id: str) -> dict[str, Any] | None:
        state = self.executions.get(execution_id)
        if state is not None:
            return render(state)
        request = self.accepted.get(execution_id)
        return render_accepted(request) if request else None

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Per priority: accepted but not started yet (queued), and started but not ended (running)."""
        counts = {p.value: {"queued": 0, "running": 0} for p in Priority}
        for request in self.accepted.values():
            counts[request.priority.value]["queued"] += 1
        for state in self.executions.values():
            if not state.status.terminal:
                counts[state.priority.value]["running"] += 1
        return counts

    def status(self, execution_id: str) -> ExecutionStatus | None:
        state = self.executions.get(execution_id)
        if state is not None:
            return state.status
        return ExecutionStatus.PENDING if execution_id in self.accepted else None

    async def wait_terminal(self, execution_id: str, within: float) -> bool:
        """Wait until the execution ends; False if ``within`` seconds run out first."""
        return await self._wait(execution_id, within, lambda s: s.status.terminal)

    async def wait_started(self, execution_id: str, within: float) -> bool:
        """Wait until the execution has events (its start was decided); False on timeout."""
        return await self._wait(execution_id, within, lambda _s: True)

    async def _wait(
        self, execution_id: str, within: float, reached: Callable[[ExecutionState], bool]
    ) -> bool:
        state = self.executions.get(execution_id)
        if state is not None and reached(state):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (reached, fut)
        self._waiters[execution_id].append(waiter)
        try:
            await asyncio.wait_for(fut, within)
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[execution_id]
        return True

    def query(
        self, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first, filtered."""
        states: Iterable[ExecutionState] = self.executions.values()
        rows = [
            s
            for s in states
            if (status is None or s.status.value == status)
            and (workflow_id is None or s.workflow.id == workflow_id)
        ]
        rows.sort(key=lambda s: s.created_at, reverse=True)
        return [render(s) for s in rows[:limit]]
