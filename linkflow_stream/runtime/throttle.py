"""Rate limits on outgoing calls, checked by the executor right before a node calls out.

A task whose bucket has a token runs; one without gets back "throttled, come back at T" at once
(``NodeResult.throttled_until``), and the orchestrator parks the node on a durable timer that
dispatches the same attempt again at T. The wait holds no worker slot and is no failure.

The buckets live in this process. A node's limit is shared by the live executors of the pool:
each takes ``per_second / n`` and ``max(1, burst / n)``, where ``n`` is the number of live engine
instances in the worker registry (``live_instances``). ADR 0031 gives the bound this keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from linkflow_stream.core.clock import now as wall_now
from linkflow_stream.core.rate_limit import Buckets, RateLimitBucket, instance_share


class NodeThrottle:
    def __init__(
        self,
        live_instances: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live_instances = live_instances
        """How many executors share each limit (at least 1: this one)."""
        self.clock = clock
        self.buckets = Buckets()

    def check(self, limit: RateLimitBucket, at: datetime | None = None) -> datetime | None:
        """``None``: a token was taken, call now. Otherwise the time to come back."""
        per_second, burst = instance_share(limit.per_second, limit.burst, self.live_instances())
        verdict = self.buckets.take(limit.key, per_second, burst, self.clock())
        if verdict.granted:
            return None
        # Whole milliseconds, the wire's precision, rounded up so the come-back is never early.
        wait_ms = int(verdict.retry_in * 1000) + 1
        return (at or wall_now()) + timedelta(milliseconds=wait_ms)
