"""Wall-clock helpers: millisecond precision, as Kafka timestamps and Avro timestamp-millis hold it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core import clock


def test_now_is_utc_and_whole_milliseconds() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    now = clock.now()
    after = datetime.now(UTC)
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert now.microsecond % 1000 == 0
    assert before <= now <= after


@pytest.mark.parametrize(
    ("ms", "iso"),
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123000+00:00"),
    ],
)
def test_from_millis_is_utc(ms: int, iso: str) -> None:
    assert clock.from_millis(ms).isoformat() == iso


@settings(max_examples=300, deadline=None)
@given(ms=st.integers(1_600_000_000_000, 1_900_000_000_000))
def test_to_millis_inverts_from_millis_in_the_current_era(ms: int) -> None:
    assert clock.to_millis(clock.from_millis(ms)) == ms


@pytest.mark.parametrize(
    "ms",
    [
        1_079_919_129_416,  # 2004-03-22T01:32:09.416Z
        2_193_528_273_693,  # 2039-07-06T01:24:33.693Z
    ],
)
def test_to_millis_inverts_from_millis(ms: int) -> None:
    assert clock.to_millis(clock.from_millis(ms)) == ms
