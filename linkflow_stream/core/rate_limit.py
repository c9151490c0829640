"""Token buckets: how fast a team may start runs and a node may call out. Pure: time is an argument.

Invariants:
- a bucket never holds more than ``burst`` tokens and gains ``per_second`` tokens a second, so
  the takes it grants in any interval of ``t`` seconds number at most ``burst + per_second * t``;
- a refused take consumes nothing; it says when a token will be there (``TokenBucket.wait``);
- ``Buckets`` hands each refused caller a distinct later time (``hint``), one token interval
  (plus ``QUEUE_MARGIN_SECONDS``) after the previous one, so callers that wait do not all come
  back at once. A hint is advice: the caller that comes back takes a token like any other, and
  is refused again if none is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

MAX_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000
QUEUE_MARGIN_SECONDS = 0.05
"""Added to the interval between two queued callers' hints (at most a quarter of the interval).
A caller comes back a little late (a timer, a dispatch); the bucket's next token counts from
when the one before actually took its token, so without a margin a caller whose predecessor was
later than itself finds no token and goes to the back of the queue. The queue then runs a little
below the rate, never above it."""


class RateLimit(BaseModel):
    """A node's ``rate_limit``: at most ``per_second`` calls a second, ``burst`` at once, per value
    of ``key`` (JSONata over ``{input, nodes}``; without it, one bucket for the node)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: float = Field(gt=0, le=MAX_PER_SECOND)
    burst: int = Field(default=1, ge=1, le=MAX_BURST)
    key: str | None = Field(default=None, min_length=1, max_length=2000)


class RateLimitBucket(BaseModel):
    """The bucket one task draws from: the node's limit with its key evaluated (``NodeTask``)."""

    model_config = ConfigDict(frozen=True)

    key: str
    """Names the bucket: ``<workflow>/<node>/<key value>``."""
    per_second: float
    burst: int


@dataclass
class TokenBucket:
    """``burst`` tokens at most, ``per_second`` more each second. ``at`` is when ``tokens`` was true."""

    per_second: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, per_second: float, burst: float, now: float) -> TokenBucket:
        return cls(per_second, burst, burst, now)

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
            self.at = now

    def resize(self, per_second: float, burst: float, now: float) -> None:
        """New limits from ``now`` on (the share of an instance changed); never more tokens than ``burst``."""
        self.refill(now)
        self.per_second, self.burst = per_second, burst
        self.tokens = min(self.tokens, burst)

    def take(self, now: float) -> bool:
        """One token if there is one (then ``True``); nothing taken otherwise."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0 when one is)."""
        self.refill(now)
        return max(0.0, (1.0 - self.tokens) / self.per_second)

    def idle_full(self, now: float) -> bool:
        """Full at ``now``: forgetting this bucket and making a new full one changes nothing."""
        self.refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True)
class Verdict:
    """A take: ``granted``, or refused with ``retry_in`` seconds until the caller should come back."""

    granted: bool
    retry_in: float = 0.0


class Buckets:
    """Token buckets by name, made full on first use, forgotten when full and unused (bounded memory)."""

    def __init__(self, max_idle: int = 10_000) -> None:
        self.max_idle = max_idle
        self._buckets: dict[str, TokenBucket] = {}
        self._next_hint: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, name: str, per_second: float, burst: float, now: float, *, queue: bool = True) -> Verdict:
        """Take a token from bucket ``name`` with these limits at ``now`` (seconds, any epoch).
        Refused with ``queue``, the caller is told a time behind those refused before it; without,
        the time the next token is there (for callers that may never come back)."""
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= self.max_idle:
                self._forget_full(now)
            bucket = self._buckets[name] = TokenBucket.full(per_second, burst, now)
        elif bucket.per_second != per_second or bucket.burst != burst:
            bucket.resize(per_second, burst, now)
        if bucket.take(now):
            return Verdict(True)
        if not queue:
            return Verdict(False, bucket.wait(now))
        # Queue the refused caller behind those refused before it, one token interval apart.
        interval = 1.0 / per_second
        behind = self._next_hint.get(name, -math.inf) + interval + min(QUEUE_MARGIN_SECONDS, interval / 4)
        at = max(now + bucket.wait(now), behind)
        self._next_hint[name] = at
        return Verdict(False, at - now)

    def _forget_full(self, now: float) -> None:
        """Make room: forget full buckets, with their hints (a bucket that refilled has no one
        queued whom a hint must keep apart; a hint kept would outlive its bucket for ever). A
        bucket not yet full is kept: forgetting it would hand out a fresh burst."""
        for name in [n for n, b in self._buckets.items() if b.idle_full(now)]:
            del self._buckets[name]
            self._next_hint.pop(name, None)


def instance_share(per_second: float, burst: int, instances: int) -> tuple[float, float]:
    """One instance's part of a limit shared by ``instances``: the rate divided, and the burst
    divided but never below one token (a bucket below one token could never grant)."""
    n = max(1, instances)
    return per_second / n, max(1.0, burst / n)
