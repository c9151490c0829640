"""Whose batch goes next among the partitions one orchestrator process owns (ADR 0052).

Each owned partition commits its own transactions, under its own transactional id (that is what
fences a former owner). Left to themselves, the partition workers of one process decide and
commit at the same time, so under load a process owning four partitions made four small
transactions where one partition would have made one large one: about 3 runs a transaction at 32
callers against 11. A transaction costs the engine and the broker a fixed amount (five requests,
a fetch, a marker on every partition it wrote) whatever it carries.

A turn lets ``limit`` workers decide and commit at once (default one). The others' inputs keep
arriving meanwhile, so each batch, when its turn comes, carries what came in during the turns
before it: fewer, larger transactions, and no input waits longer than the batches in front of it.
At one caller nothing waits (one worker has work at a time).

Turns go by rank, then in the order they were asked for: a worker with high-priority requests
waiting goes before one with commands and results, which goes before one with only normal and
low requests or due timers (ADR 0029: high requests do not wait behind a low flood elsewhere).
A worker that has just had its turn asks again behind the others, so no partition waits for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Ask:
    granted: asyncio.Future[None]
    rank: Callable[[], int]
    """Asked when a turn is handed on: the worker's work may have changed while it waited."""
    order: int = field(default=0)


class BatchTurn:
    """At most ``limit`` batches at once (``0``: no limit), handed on by rank."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._asks: list[_Ask] = []
        self._order = itertools.count()

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
        await self._acquire(rank)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, rank: Callable[[], int]) -> None:
        if self._free > 0 and not self._asks:
            self._free -= 1
            return
        ask = _Ask(asyncio.get_running_loop().create_future(), rank, next(self._order))
        self._asks.append(ask)
        try:
            await ask.granted
        except asyncio.CancelledError:
            if ask in self._asks:
                self._asks.remove(ask)
            elif ask.granted.done() and not ask.granted.cancelled():
                self._release()  # handed a turn, then cancelled before it ran: hand it on
            raise

    def _release(self) -> None:
        # an ask whose task was cancelled is done already: it leaves the queue when it resumes
        self._asks = [a for a in self._asks if not a.granted.done()]
        if not self._asks:
            self._free += 1
            return
        best = min(self._asks, key=lambda a: (a.rank(), a.order))
        self._asks.remove(best)
        best.granted.set_result(None)
