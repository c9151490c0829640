"""Durable timers, noticed: the timers live in each execution's state (and so in the changelog);
this queue only knows when the next one is due, for the partition that owns them.

A firing names the timer and its due time, and the decider ignores one that no longer matches
the state (a deadline moved, an attempt moved on). Nothing is fired twice by design and nothing
is lost: a firing is decided inside the partition's transaction like any input, so it commits
with its events or not at all, and an aborted one is found due again on the next tick.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime

from linkflow_stream.core.clock import to_millis
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, Timer, TimerKind

RETRY_MS = 1_000
"""A timer still pending this long after it was fired (its transaction aborted, or the decider
kept it) is offered again."""
COMPACT_SLACK = 1_024
"""Outdated heap entries tolerated beyond the pending timers' count before the heap is rebuilt
without them (``_compact``)."""


@dataclass(frozen=True)
class DueTimer:
    execution_id: str
    timer_id: str
    due_at: datetime


def _offered(state: ExecutionState, timer: Timer) -> bool:
    """A paused run's timers wait for its resume, which handles those due by then (ADR 0034):
    only its deadline fires while it is paused."""
    return state.status is not ExecutionStatus.PAUSED or timer.kind is TimerKind.EXECUTION_TIMEOUT


class TimerQueue:
    """The pending timers of one partition's executions, by due time."""

    def __init__(self) -> None:
        # (when to look, execution, timer id, the timer's due time), all in epoch ms
        self._heap: list[tuple[int, str, str, int]] = []
        # execution -> timer id -> due time; a heap entry that disagrees is outdated
        self._pending: dict[str, dict[str, datetime]] = {}
        self._count = 0
        """The pending timers, all executions together."""

    def __len__(self) -> int:
        return self._count

    def track(self, state: ExecutionState) -> None:
        """Know the timers of ``state`` as committed."""
        known = self._pending.get(state.id, {})
        current = {timer_id: t.due_at for timer_id, t in state.timers.items() if _offered(state, t)}
        for timer_id, due in current.items():
            if known.get(timer_id) != due:
                due_ms = to_millis(due)
                heapq.heappush(self._heap, (due_ms, state.id, timer_id, due_ms))
        self._count += len(current) - len(known)
        if current:
            self._pending[state.id] = current
        else:
            self._pending.pop(state.id, None)
        self._compact()

    def forget(self, execution_id: str) -> None:
        self._count -= len(self._pending.pop(execution_id, {}))
        self._compact()

    def _compact(self) -> None:
        """Drop outdated entries once they outnumber the pending timers (plus ``COMPACT_SLACK``).
        An entry leaves the heap only when its time comes, and a run that ended, or moved a
        timer, leaves its old entries behind: a 30-day deadline of a run that took a second
        would stay a month, and at a million runs a day the heap would grow to gigabytes. The
        rebuild keeps each live entry's time to look (a fired timer's retry time too), so it
        changes nothing that ``due`` returns; it costs O(heap) once per as many stale entries."""
        if len(self._heap) <= 2 * self._count + COMPACT_SLACK:
            return
        self._heap = [entry for entry in self._heap if self._live(entry)]
        heapq.heapify(self._heap)

    def _live(self, entry: tuple[int, str, str, int]) -> bool:
        _, execution_id, timer_id, due_ms = entry
        due = self._pending.get(execution_id, {}).get(timer_id)
        return due is not None and to_millis(due) == due_ms

    def next_due_ms(self) -> int | None:
        """When the earliest timer is due (epoch ms), if any; may name an outdated entry."""
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: int) -> list[DueTimer]:
        """The timers due at ``now_ms``. They stay pending until a committed state drops them,
        so a firing whose transaction aborted is returned again by a later call; the caller
        fires each once per call."""
        out: list[DueTimer] = []
        keep: list[tuple[int, str, str, int]] = []
        while self._heap and self._heap[0][0] <= now_ms:
            _, execution_id, timer_id, due_ms = heapq.heappop(self._heap)
            due = self._pending.get(execution_id, {}).get(timer_id)
            if due is None or to_millis(due) != due_ms:
                continue  # fired and gone, or moved (a newer entry exists)
            out.append(DueTimer(execution_id, timer_id, due))
            keep.append((now_ms + RETRY_MS, execution_id, timer_id, due_ms))
        for entry in keep:  # offered again until a committed state drops it
            heapq.heappush(self._heap, entry)
        return out
