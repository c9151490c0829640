"""Wall-clock helpers: millisecond precision, as Kafka timestamps and Avro timestamp-millis hold it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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


def test_iso_prints_utc_with_z_and_other_offsets_as_they_are_whatever_was_printed_before() -> None:
    """``iso`` keeps the text of UTC times: an equal time at another offset is an equal key, so
    it must not be answered from what was kept (either order)."""
    utc = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    plus_one = utc.astimezone(timezone(timedelta(hours=1)))
    later = datetime(2026, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    assert plus_one == utc
    assert clock.iso(utc) == "2026-01-02T03:04:05.006000Z"
    assert clock.iso(plus_one) == "2026-01-02T04:04:05.006000+01:00"
    assert clock.iso(later) == "2026-01-02T05:00:00+02:00"
    assert clock.iso(later.astimezone(UTC)) == "2026-01-02T03:00:00Z"
    assert clock.iso(utc.replace(tzinfo=timezone(timedelta(0)))) == "2026-01-02T03:04:05.006000Z"


def test_isoformat_is_datetimes_own_whatever_was_printed_before() -> None:
    utc = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    minus_five = utc.astimezone(timezone(timedelta(hours=-5)))
    for first, second in ((utc, minus_five), (minus_five, utc)):
        clock.isoformat(first)
        assert clock.isoformat(second) == second.isoformat()
    assert clock.isoformat(utc) == "2026-01-02T03:04:05+00:00"
    naive = utc.replace(tzinfo=None)  # a naive time has no offset: never the cache
    assert clock.isoformat(naive) == "2026-01-02T03:04:05"
