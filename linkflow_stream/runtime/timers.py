"""Durable timers: they live in each execution's state; this service only notices when one is
due and sends a ``timer_fired`` command, which the decider then applies (or ignores as stale).

The heap is memory only. It is rebuilt from the orchestrator's table after every recovery and
kept current on every state write, so a restart loses no timer. A timer whose command went
missing is fired again (``REFIRE_AFTER_MS``); the decider ignores firings that no longer match.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Iterable

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now, to_millis
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.kafka.publisher import Outgoing, Publisher

log = logging.getLogger(__name__)


REFIRE_AFTER_MS = 5_000
"""A fired timer still pending this long after firing is fired again (then after 10 s, 20 s, ...
up to a minute): the command may have been lost, e.g. skipped by a consumer during a rebalance.
The decider ignores a firing that no longer matches, so a late duplicate is harmless."""
MAX_REFIRE_MS = 60_000


class TimerService:
    def __init__(self, publisher: Publisher, *, clock: Callable[[], int] = lambda: to_millis(now())) -> None:
        self.publisher = publisher
        self.clock = clock
        # (when to look, execution, timer id, the timer's due time, times fired so far)
        self._heap: list[tuple[int, str, str, int, int]] = []
        # execution -> timer id -> due time: a timer is identified by both, since a deadline
        # keeps its id when it moves
        self._pending: dict[str, dict[str, int]] = {}
        self._wake = asyncio.Event()
        self.fired_total = 0
        self.refired_total = 0

    def track(self, state: ExecutionState) -> None:
        """Record the timers of ``state`` after it was stored."""
        known = self._pending.get(state.id, {})
        current = {timer_id: to_millis(t.due_at) for timer_id, t in state.timers.items()}
        for timer_id, due in current.items():
            if known.get(timer_id) != due:
                heapq.heappush(self._heap, (due, state.id, timer_id, due, 0))
                self._wake.set()
        if current:
            self._pending[state.id] = current
        else:
            self._pending.pop(state.id, None)

    def rebuild(self, states: Iterable[ExecutionState]) -> None:
        for state in states:
            self.track(state)

    def due(self) -> list[tuple[str, str]]:
        """Pop the timers due now that are still pending; each is checked again later, and fired
        again if its state still holds it then."""
        out = []
        at = self.clock()
        while self._heap and self._heap[0][0] <= at:
            _, execution_id, timer_id, due, fires = heapq.heappop(self._heap)
            if self._pending.get(execution_id, {}).get(timer_id) != due:
                continue  # fired and gone, or moved to another time (a newer entry exists)
            if fires:
                self.refired_total += 1
                log.warning(
                    "timer %s of %s still pending %d ms after firing; firing again",
                    timer_id,
                    execution_id,
                    min(REFIRE_AFTER_MS << (fires - 1), MAX_REFIRE_MS),
                )
            out.append((execution_id, timer_id))
            recheck = at + min(REFIRE_AFTER_MS << fires, MAX_REFIRE_MS)
            heapq.heappush(self._heap, (recheck, execution_id, timer_id, due, fires + 1))
        return out

    async def run(self) -> None:
        while True:
            fire = self.due()
            if fire:
                try:
                    await self.publisher.send(
                        Outgoing(
                            topic_names.COMMANDS,
                            execution_id,
                            ExecutionCommand(
                                execution_id=execution_id, kind=CommandKind.TIMER_FIRED, timer_id=timer_id
                            ),
                            "io.linkflow.command.timer_fired",
                        )
                        for execution_id, timer_id in fire
                    )
                    self.fired_total += len(fire)
                    log.debug("fired %d timers: %s", len(fire), fire[:5])
                except Exception:
                    log.exception("could not send %d timer commands; retrying", len(fire))
                    for execution_id, timer_id in fire:
                        due = self._pending.get(execution_id, {}).get(timer_id)
                        if due is not None:
                            heapq.heappush(self._heap, (self.clock() + 500, execution_id, timer_id, due, 0))
                    await asyncio.sleep(0.5)
                continue
            delay = (self._heap[0][0] - self.clock()) / 1000 if self._heap else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.005, min(delay, 1.0)))
