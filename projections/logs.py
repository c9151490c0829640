"""Execution logs: readable lines folded from the event log, per execution, plus what nodes printed.

``lines_for`` is pure: one event and the states around it give the lines it adds. The lines are
stored by the read model (``projections.read_model``), searchable there; ``LogView`` lets
WebSocket readers follow new ones.
"""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict
from datetime import datetime
from typing import Any

from linkflow_stream.core.clock import iso
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.inline_attempts import is_merged
from linkflow_stream.core.state import ExecutionState

LEVELS = ("debug", "info", "warning", "error")

Line = dict[str, Any]


def _line(at: datetime, level: str, message: str, node_id: str | None = None, **data: Any) -> Line:
    return {
        "at": iso(at),
        "level": level,
        "node_id": node_id,
        "message": message,
        "data": data or None,
    }


def _printed(e: ExecutionEvent) -> list[Line]:
    out = []
    for stream, level in (("stdout", "info"), ("stderr", "warning")):
        for text in (e.logs or {}).get(stream, "").splitlines():
            out.append(_line(e.at, level, text, e.node_id, stream=stream))
    return out


def lines_for(e: ExecutionEvent, after: ExecutionState) -> list[Line]:
    """The log lines that event ``e`` adds, given the execution's state after it."""
    if is_merged(e):  # an inline attempt in one event (ADR 0056): its start's line, then its end's
        return [
            _started_line(e.at, _kind(e, after), e.node_id, e.attempt, e.dispatch, None),
            *_lines(e, after),
        ]
    return _lines(e, after)


def _kind(e: ExecutionEvent, after: ExecutionState) -> str | None:
    """The type of the node ``e`` concerns (``None``: a run-level event)."""
    return after.workflow.node(e.node_id).type if e.node_id else None


STARTED_HOW = {
    "inline": "in the orchestrator",
    "task": "on an executor",
    "timer": "as a timer",
    "child": "as a child run",
    "signal": "waiting for a signal",
}
"""How an attempt runs, by its ``dispatch``, as its start's line says it."""


def _started_line(
    at: datetime,
    kind: str | None,
    node_id: str | None,
    attempt: int | None,
    dispatch: str | None,
    reason: str | None,
) -> Line:
    """The line of an attempt's start: a ``node_started``, or the start half of a merged inline
    attempt, taken from its fields (no second event object is built for it)."""
    how = STARTED_HOW.get(dispatch or "task", f"as {dispatch}")
    note = f" ({reason})" if reason else ""
    return _line(at, "info", f"{kind} node {node_id} started, attempt {attempt}, {how}{note}", node_id)


def _lines(e: ExecutionEvent, after: ExecutionState) -> list[Line]:
    node = after.nodes.get(e.node_id) if e.node_id else None
    kind = _kind(e, after)
    t = e.type
    if t is EventType.EXECUTION_CREATED:
        wf = after.workflow
        return [
            _line(
                e.at, "info", f"execution created: workflow {wf.id} v{wf.version}, priority {after.priority}"
            )
        ]
    if t is EventType.EXECUTION_QUEUED:
        return [_line(e.at, "info", f"execution queued: {e.reason or 'waiting for a concurrency slot'}")]
    if t is EventType.EXECUTION_STARTED:
        return [_line(e.at, "info", "execution started")]
    if t is EventType.EXECUTION_DEADLINE_SET:
        return [
            _line(
                e.at, "info", f"deadline set: {e.reason}", due_at=e.due_at.isoformat() if e.due_at else None
            )
        ]
    if t is EventType.NODE_STARTED:
        return [_started_line(e.at, kind, e.node_id, e.attempt, e.dispatch, e.reason)]
    if t is EventType.NODE_SUCCEEDED:
        took = (e.at - node.started_at).total_seconds() if node and node.started_at else 0.0
        return [
            *_printed(e),
            _line(e.at, "info", f"{kind} node {e.node_id} succeeded in {took:.3f}s", e.node_id),
        ]
    if t is EventType.NODE_RETRY_SCHEDULED and e.error:
        return [
            *_printed(e),
            _line(
                e.at,
                "warning",
                f"{kind} node {e.node_id} attempt {e.attempt} failed "
                f"({e.error.error_class}: {e.error.message}); retry at {e.due_at}"
                + (f" ({e.reason})" if e.reason else ""),
                e.node_id,
            ),
        ]
    if t is EventType.NODE_FAILED and e.error:
        return [
            *_printed(e),
            _line(
                e.at,
                "error",
                f"{kind} node {e.node_id} failed: {e.error.error_class}: {e.error.message}"
                + (f" ({e.reason})" if e.reason else ""),
                e.node_id,
                error_class=e.error.error_class,
            ),
        ]
    if t is EventType.NODE_THROTTLED:
        return [
            _line(
                e.at,
                "info",
                f"{kind} node {e.node_id} attempt {e.attempt} waits for its rate limit "
                f"({e.reason}); dispatched again at {e.due_at}",
                e.node_id,
                due_at=e.due_at.isoformat() if e.due_at else None,
            )
        ]
    if t is EventType.SIGNAL_RECEIVED and e.signal is not None:
        return [_line(e.at, "info", f"signal {e.signal.name} received (id {e.signal.id})")]
    if t is EventType.NODE_SKIPPED:
        return [_line(e.at, "info", f"node {e.node_id} skipped: {e.reason}", e.node_id)]
    if t is EventType.NODE_REUSED:
        return [_line(e.at, "info", f"node {e.node_id} not run: {e.reason}", e.node_id)]
    if t is EventType.NODE_CANCELLED:
        return [_line(e.at, "warning", f"node {e.node_id} cancelled: {e.reason}", e.node_id)]
    if t is EventType.EXECUTION_SUCCEEDED:
        return [_line(e.at, "info", "execution succeeded")]
    if t is EventType.EXECUTION_FAILED:
        return [_line(e.at, "error", f"execution failed: {e.reason}")]
    if t is EventType.EXECUTION_CANCELLED:
        return [_line(e.at, "warning", f"execution cancelled: {e.reason}")]
    if t is EventType.EXECUTION_PAUSED:
        held = f"; deadline {e.due_at.isoformat()} suspended" if e.due_at else ""
        return [_line(e.at, "info", f"execution paused: {e.reason}{held}")]
    if t is EventType.EXECUTION_RESUMED:
        moved = f"; deadline now {e.due_at.isoformat()}" if e.due_at else ""
        return [_line(e.at, "info", f"execution resumed: {e.reason}{moved}")]
    return []


Followed = tuple[int, int, Line]
"""A line with where it comes from (event seq, place among its lines), so a reader that read the
stored backlog can drop what it already has."""


class TooSlow(enum.Enum):
    """Put in a follower's queue instead of the line that would overflow it."""

    TOO_SLOW = "too slow"


FOLLOW_BACKLOG = 1000
"""Lines a follower may have waiting when a new batch comes; more, and it is dropped (with
``TooSlow``), so a reader that does not read cannot make the engine buffer a run's output without
end. A batch is always handed whole to a reader that kept up, however many lines it has."""

FollowQueue = asyncio.Queue[Followed | TooSlow | None]


class LogView:
    """The WebSocket followers of running executions; the lines themselves are in the store."""

    def __init__(self, backlog: int = FOLLOW_BACKLOG) -> None:
        self.backlog = backlog
        self._followers: defaultdict[str, set[FollowQueue]] = defaultdict(set)

    def publish(self, execution_id: str, lines: list[Followed], ended: bool) -> None:
        """Hand stored lines to the run's followers; an ended run's followers get ``None`` last,
        and one whose backlog is full gets ``TooSlow`` instead and is followed no more."""
        for queue in list(self._followers.get(execution_id, ())):
            if lines and queue.qsize() >= self.backlog:
                self.unfollow(execution_id, queue)
                queue.put_nowait(TooSlow.TOO_SLOW)
                continue
            for line in lines:
                queue.put_nowait(line)
        if ended:
            for queue in self._followers.pop(execution_id, set()):
                queue.put_nowait(None)

    def follow(self, execution_id: str) -> FollowQueue:
        """A queue of the execution's new lines; ``None`` once it has ended."""
        queue: FollowQueue = asyncio.Queue()
        self._followers[execution_id].add(queue)
        return queue

    def unfollow(self, execution_id: str, queue: FollowQueue) -> None:
        followers = self._followers.get(execution_id)
        if followers is not None:
            followers.discard(queue)
            if not followers:
                del self._followers[execution_id]
