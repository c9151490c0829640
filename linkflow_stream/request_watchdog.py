"""The backstop for start requests and cancels. An accepted request with no execution events
after a while is published again, with the same execution id; a run still going a while after
a cancel this instance sent is cancelled again.

A consumer can skip records around a rebalance (observed with Faust: three consecutive records of
one partition never reached the agent after a takeover, see docs/decisions/0009). Timers are
fired again and tasks have leases; this covers the one input nothing else would retry. The
decider ignores a start for an execution that exists, so a resend can only start a run that never
started, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.kafka.publisher import Outgoing, Publisher
from projections.status import StatusView

log = logging.getLogger(__name__)

RESEND_AFTER = timedelta(seconds=10)
CANCEL_RESEND_AFTER = timedelta(seconds=5)
MAX_RESENDS = 3


class RequestWatchdog:
    def __init__(
        self,
        status: StatusView,
        publisher: Publisher,
        ready: Callable[[], bool],
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.status = status
        self.publisher = publisher
        self.ready = ready
        self.clock = clock
        self.resent: dict[str, int] = {}
        self.resent_total = 0
        self.cancels: dict[str, tuple[datetime, int]] = {}
        """Cancels sent from this instance: when, and how often sent again."""

    def watch_cancel(self, execution_id: str) -> None:
        """Remember a cancel this instance sent, to send it again if the run goes on."""
        self.cancels.setdefault(execution_id, (self.clock(), 0))

    def stale_cancels(self) -> list[str]:
        """Cancels whose run is still going ``CANCEL_RESEND_AFTER`` (per try) after them."""
        at = self.clock()
        out = []
        for execution_id, (sent_at, tries) in list(self.cancels.items()):
            status = self.status.status(execution_id)
            if status is None or status.terminal or tries >= MAX_RESENDS:
                del self.cancels[execution_id]
            elif at - sent_at >= CANCEL_RESEND_AFTER * (tries + 1):
                out.append(execution_id)
        return out

    def stale(self) -> list[str]:
        """Accepted requests older than ``RESEND_AFTER`` (per try) that still have no events."""
        at = self.clock()
        out = []
        for execution_id, request in list(self.status.accepted.items()):
            tries = self.resent.get(execution_id, 0)
            if tries >= MAX_RESENDS or execution_id in self.status.executions:
                continue
            if at - request.requested_at >= RESEND_AFTER * (tries + 1):
                out.append(execution_id)
        return out

    async def check(self) -> int:
        if not self.ready():
            return 0
        stale = self.stale()
        for execution_id in stale:
            request = self.status.accepted[execution_id]
            self.resent[execution_id] = self.resent.get(execution_id, 0) + 1
            log.warning(
                "start request %s has no events after %s; publishing it again (try %d of %d)",
                execution_id,
                self.clock() - request.requested_at,
                self.resent[execution_id],
                MAX_RESENDS,
            )
        if stale:
            await self.publisher.send(
                Outgoing(
                    topic_names.requests(self.status.accepted[e].priority),
                    e,
                    self.status.accepted[e],
                    "io.linkflow.execution.requested",
                    time=self.status.accepted[e].requested_at,
                )
                for e in stale
            )
            self.resent_total += len(stale)
        for execution_id in [e for e in self.resent if e in self.status.executions]:
            del self.resent[execution_id]
        cancels = self.stale_cancels()
        for execution_id in cancels:
            sent_at, tries = self.cancels[execution_id]
            self.cancels[execution_id] = (sent_at, tries + 1)
            log.warning(
                "execution %s still runs %s after its cancel; cancelling again (try %d of %d)",
                execution_id,
                self.clock() - sent_at,
                tries + 1,
                MAX_RESENDS,
            )
        if cancels:
            await self.publisher.send(
                Outgoing(
                    topic_names.COMMANDS,
                    e,
                    ExecutionCommand(execution_id=e, kind=CommandKind.CANCEL, reason="cancelled by request"),
                    "io.linkflow.command.cancel",
                )
                for e in cancels
            )
            self.resent_total += len(cancels)
        return len(stale) + len(cancels)

    async def run(self, every: float = 2.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.check()
            except Exception:  # the next round tries again
                log.exception("request watchdog round failed")
