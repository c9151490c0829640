"""ADR 0073: a run started over HTTP without a key gets a UUIDv7, so ids sort by creation."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest

from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.execution_ids import new_execution_id

AT = from_millis(1_796_400_000_123)


def test_an_id_is_a_uuidv7_holding_the_requests_millisecond() -> None:
    made = new_execution_id(AT)
    assert re.fullmatch(r"exec_[0-9a-f]{32}", made), made
    value = uuid.UUID(made.removeprefix("exec_"))
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert value.int >> 80 == to_millis(AT)


def test_the_random_bits_are_the_entropy_given_and_differ_between_calls() -> None:
    ones = new_execution_id(AT, b"\xff" * 10)
    zeros = new_execution_id(AT, b"\x00" * 10)
    random_bits = ((1 << 12) - 1) << 64 | (1 << 62) - 1  # rand_a before the variant, rand_b after
    assert uuid.UUID(ones[5:]).int - uuid.UUID(zeros[5:]).int == random_bits
    assert new_execution_id(AT, b"\x01" * 10) == new_execution_id(AT, b"\x01" * 10)
    assert len({new_execution_id(AT) for _ in range(1000)}) == 1000


def test_ids_made_later_sort_later_whatever_their_random_bits() -> None:
    earlier = new_execution_id(AT, b"\xff" * 10)
    later = new_execution_id(AT + timedelta(milliseconds=1), b"\x00" * 10)
    assert earlier < later


def test_entropy_of_another_length_is_refused() -> None:
    """Fewer bytes would give silently fewer random bits."""
    with pytest.raises(ValueError, match="10 bytes"):
        new_execution_id(AT, b"\x01" * 9)
