"""The start rate limit of each team: a token bucket per team in front of ``POST /api/executions``.

Per API instance (ADR 0031): each instance keeps its own buckets, so behind a load balancer over
``n`` instances a team may start up to ``n`` times the rate. A refusal is a 429 with
``Retry-After`` and takes no token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from linkflow_stream.core.rate_limit import Buckets
from linkflow_stream.http.errors import RateLimitedError


class TeamStartLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.per_second = per_second
        self.burst = burst if burst is not None else max(1, math.ceil(per_second))
        self.clock = clock
        self.on_refused = on_refused
        self.buckets = Buckets()

    def admit(self, team: str | None) -> None:
        """Take a token of ``team``'s bucket (workflows without a team share one); raise
        ``RateLimitedError`` when there is none."""
        verdict = self.buckets.take(team or "", self.per_second, self.burst, self.clock(), queue=False)
        if verdict.granted:
            return
        self.on_refused()
        wait = verdict.retry_in
        raise RateLimitedError(
            f"team {team or '(none)'} is over its start rate of {self.per_second:g}/s "
            f"(burst {self.burst}); retry in {max(wait, 0.001):.3f}s",
            retry_after_seconds=wait,
        )
