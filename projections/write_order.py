"""Store writes in the order their folds applied; a write given up never holds up the later ones.

The read model applies a batch in memory, then writes it; the writes must reach the store in the
order the batches applied (positions only move forward, a run's lines reach followers in order),
though each one prepares its rows concurrently with the next fold. Each write takes a ticket when
it applies and waits for its turn. A write that ends without writing (an exception while its rows
are rendered, a cancellation at a stop) gives its ticket up: the later tickets go on without it,
where an order kept by "the ticket after mine" alone would wait for it for ever.
"""

from __future__ import annotations

import asyncio


class WriteOrder:
    """Tickets in the order they are taken; each write waits until every earlier one is done."""

    def __init__(self) -> None:
        self._taken = 0
        self._next = 0
        """The ticket whose write goes now: every earlier one is done."""
        self._done_early: set[int] = set()
        """Tickets given up before their turn, skipped when it comes."""
        self._moved = asyncio.Event()

    def take(self) -> int:
        ticket = self._taken
        self._taken += 1
        return ticket

    async def turn(self, ticket: int) -> None:
        """Wait until every ticket taken before ``ticket`` is done."""
        while self._next < ticket:
            await self._moved.wait()

    def done(self, ticket: int) -> None:
        """``ticket`` wrote, or gave up (at any point: before its turn, it is skipped when that
        comes). Synchronous, so a ``finally`` under cancellation can always call it."""
        self._done_early.add(ticket)
        while self._next in self._done_early:
            self._done_early.discard(self._next)
            self._next += 1
        self._moved.set()
        self._moved = asyncio.Event()

    def written(self, ticket: int) -> bool:
        """Whether ``ticket`` and every ticket before it are done."""
        return self._next > ticket

    async def until_written(self, ticket: int) -> None:
        while self._next <= ticket:
            await self._moved.wait()
