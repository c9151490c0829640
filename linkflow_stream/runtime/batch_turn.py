"""Whose batch goes next among the partitions one orchestrator process owns (ADR 0052).

Each owned partition commits its own transactions, under its own transactional id (that is what
fences a former owner). Left to themselves, the partition workers of one process decide and
commit at the same time, so under load a process owning four partitions made four small
transactions where one partition would have made one large one: about 3 runs a transaction at 32
callers against 11. A transaction costs the engine and the broker a fixed amount (five requests,
a fetch, a marker on every partition it wrote) whatever it carries.

A turn lets ``limit`` workers decide and commit at once (default one). The others' inputs keep
arriving meanwhile, so each batch, when its turn comes, carries what came in during the turns
before it: fewer, larger transactions. At one caller nothing waits (one worker has work at a time).

A turn held longer than ``max_hold`` (a runaway inline expression until its timeout, a commit
the broker is slow to answer, a batch's retries) stops counting: the next worker goes at once,
so a slow batch holds up only its own partition, as when every partition went its own way.

Turns go by rank, then in the order they were asked for: a worker with high-priority requests
waiting goes before one with commands and results, which goes before one with only normal and
low requests or due timers (ADR 0029: high requests do not wait behind a low flood elsewhere). An
ask passed over ``PATIENCE`` times goes first, so no partition waits for ever behind others that
always have better-ranked work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

MAX_HOLD_SECONDS = 0.1
"""A turn held this long no longer holds the others back. A batch of a loaded diamond takes
10-50 ms to decide and commit on two cores; a runaway expression takes up to its node's timeout."""
PATIENCE = 4
"""Turns handed to others while an ask waits, after which it goes first whatever its rank."""


@dataclass(eq=False)
class _Hold:
    started: float
    overdue: bool = False
    """Held past ``max_hold``: its place was handed on, so its release hands nothing on."""


@dataclass(eq=False)
class _Ask:
    granted: asyncio.Future[_Hold]
    rank: Callable[[], int]
    """Asked when a turn is handed on: the worker's work may have changed while it waited."""
    order: int
    passes: int = field(default=0)


class BatchTurn:
    """At most ``limit`` batches at once (``0``: no limit), handed on by rank."""

    def __init__(self, limit: int, max_hold: float = MAX_HOLD_SECONDS) -> None:
        assert limit >= 0, "0 is no limit"
        self.limit = limit
        self.max_hold = max_hold
        self._holds: list[_Hold] = []
        """Turns held and not yet overdue; the places free are the rest of ``limit``."""
        self._asks: list[_Ask] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._asks)

    @contextlib.asynccontextmanager
    async def held(self, rank: Callable[[], int]) -> AsyncIterator[None]:
        """Hold a turn while the block runs; ``rank`` (lower goes first) is asked when turns are
        handed on."""
        if self.limit == 0:
            yield
            return
        hold = await self._acquire(rank)
        try:
            yield
        finally:
            self._release(hold)

    async def _acquire(self, rank: Callable[[], int]) -> _Hold:
        loop = asyncio.get_running_loop()
        if len(self._holds) < self.limit and not self._asks:
            return self._hold()
        ask = _Ask(loop.create_future(), rank, next(self._order))
        self._asks.append(ask)
        self._arm()
        try:
            return await ask.granted
        except asyncio.CancelledError:
            if ask in self._asks:
                self._asks.remove(ask)
            elif ask.granted.done() and not ask.granted.cancelled():
                self._release(ask.granted.result())  # handed a turn, cancelled before it ran
            raise

    def _hold(self) -> _Hold:
        hold = _Hold(asyncio.get_running_loop().time())
        self._holds.append(hold)
        return hold

    def _release(self, hold: _Hold) -> None:
        if hold.overdue:
            return  # its place went to another when it became overdue
        self._holds.remove(hold)
        self._hand_on()

    def _hand_on(self) -> None:
        """Give a free place to the best ask waiting, or keep it free."""
        # an ask whose task was cancelled is done already: it leaves the queue when it resumes
        self._asks = [a for a in self._asks if not a.granted.done()]
        if not self._asks:
            return  # the place stays free
        best = min(self._asks, key=lambda a: (-1 if a.passes >= PATIENCE else a.rank(), a.order))
        self._asks.remove(best)
        for ask in self._asks:
            ask.passes += 1
        best.granted.set_result(self._hold())
        self._arm()

    def _arm(self) -> None:
        """Look again when the oldest turn held becomes overdue, while asks wait."""
        if self._timer is not None or not self._asks or not self._holds:
            return
        loop = asyncio.get_running_loop()
        due = min(h.started for h in self._holds) + self.max_hold
        self._timer = loop.call_at(due, self._overdue)

    def _overdue(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time() + 0.001  # the loop may run a timer a hair early
        for hold in [h for h in self._holds if now - h.started >= self.max_hold]:
            if not any(not a.granted.done() for a in self._asks):
                break
            hold.overdue = True
            self._holds.remove(hold)
            self._hand_on()
        self._arm()
