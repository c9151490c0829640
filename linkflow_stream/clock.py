"""Wall-clock time at the edges only, truncated to the millisecond precision of the wire."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Now, in UTC, to the millisecond (what a Kafka timestamp or an Avro timestamp-millis holds)."""
    return from_millis(int(datetime.now(UTC).timestamp() * 1000))


def from_millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_millis(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)
