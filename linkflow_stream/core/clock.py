"""Wall-clock time at the edges only, truncated to the millisecond precision of the wire."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def now() -> datetime:
    """Now, in UTC, to the millisecond (what a Kafka timestamp or an Avro timestamp-millis holds)."""
    return from_millis(to_millis(datetime.now(UTC)))


def from_millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_millis(dt: datetime) -> int:
    """Whole milliseconds since the epoch, in integer arithmetic (a float product can be 1 ms low)."""
    return (dt - EPOCH) // MILLISECOND


def iso(dt: datetime) -> str:
    """An aware time as ISO-8601 with ``Z`` for UTC: how every answer and span shows a time."""
    return isoformat(dt).replace("+00:00", "Z")


def isoformat(dt: datetime) -> str:
    """``dt.isoformat()``, kept for the latest ``ISO_CACHE`` UTC times.

    A run's few instants are printed many times over (each event's CloudEvents time, each log
    line, each body the views render, each node's start and end), and ``isoformat`` costs a few
    microseconds a call. Only times at offset zero go through the cache, because equal times at
    other offsets are equal keys that print differently."""
    if dt.utcoffset() == ZERO:
        return _utc_isoformat(dt)
    return dt.isoformat()


ZERO = timedelta(0)
ISO_CACHE = 4096


@functools.lru_cache(maxsize=ISO_CACHE)
def _utc_isoformat(dt: datetime) -> str:
    return dt.isoformat()


def seconds_to_millis(seconds: float) -> int:
    """A Kafka client's float-seconds timestamp as the integer milliseconds it came from."""
    return round(seconds * 1000)
