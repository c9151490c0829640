"""aiokafka's retry warning: a routine refusal (NOT_ENOUGH_REPLICAS, the broker's transaction
check) is counted, not logged, unless one partition's refusals come in a streak (a batch refused
again and again: in-sync replicas missing); anything else is still logged."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotEnoughReplicasError, NotLeaderForPartitionError

from linkflow_stream.kafka import produce_retries
from linkflow_stream.kafka.produce_retries import (
    SENDER_LOGGER,
    STREAK_GAP_SECONDS,
    STREAK_SECONDS,
    count_routine_retries,
)

TP = TopicPartition("linkflow.events", 3)
OTHER = TopicPartition("linkflow.events", 1)
RETRY = 1 / 64
"""About aiokafka's 20 ms between retries, and exact in binary: the clock adds up without error."""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(produce_retries._FILTER, "clock", clock)
    monkeypatch.setattr(produce_retries._FILTER, "_streaks", {})
    return clock


def warn_like_aiokafka(error: object, tp: TopicPartition = TP) -> None:
    logging.getLogger(SENDER_LOGGER).warning(
        "Got error produce response on topic-partition %s, retrying. Error: %s", tp, error
    )


def test_only_routine_retries_are_counted_instead_of_logged(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    counted: list[str] = []
    undo = count_routine_retries(counted.append)
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            warn_like_aiokafka(NotEnoughReplicasError)  # aiokafka passes the class
            clock.t += 1
            warn_like_aiokafka(NotEnoughReplicasError())
            warn_like_aiokafka(NotLeaderForPartitionError)
            sender = logging.getLogger(SENDER_LOGGER)
            sender.warning("Got error produce response: %s", NotEnoughReplicasError())
    finally:
        undo()
    assert counted == ["NotEnoughReplicasError", "NotEnoughReplicasError"]
    assert [r.getMessage() for r in caplog.records] == [
        f"Got error produce response on topic-partition {TP}, retrying. Error: {NotLeaderForPartitionError}",
        f"Got error produce response: {NotEnoughReplicasError()}",
    ]


def test_a_streak_of_refusals_on_one_partition_is_logged(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    """In-sync replicas missing: the same batch refused every 20 ms. Once that has gone on for a
    second, each is logged; a short streak (a marker a little late) and another partition's
    isolated refusals are not, nor a refusal after the streak ended."""
    counted: list[str] = []
    undo = count_routine_retries(counted.append)
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            for _ in range(5):  # 80 ms: a late marker
                warn_like_aiokafka(NotEnoughReplicasError, OTHER)
                clock.t += 0.02
            for _ in range(int(STREAK_SECONDS / RETRY) + 3):
                warn_like_aiokafka(NotEnoughReplicasError)
                clock.t += RETRY
            clock.t += STREAK_GAP_SECONDS * 2
            warn_like_aiokafka(NotEnoughReplicasError)  # the streak ended: routine again
    finally:
        undo()
    assert len(counted) == 5 + int(STREAK_SECONDS / RETRY) + 3 + 1
    assert [r.args[0] if isinstance(r.args, tuple) else None for r in caplog.records] == [TP] * 3


def test_undone_the_warning_is_logged_again(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    counted: list[str] = []
    count_routine_retries(counted.append)()
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        warn_like_aiokafka(NotEnoughReplicasError)
    assert counted == [] and len(caplog.records) == 1


def test_every_subscriber_counts_and_the_filter_stays_while_one_does(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    """Two engines in one process share aiokafka's logger: each counts every routine retry."""
    first: list[str] = []
    second: list[str] = []
    undo_first = count_routine_retries(first.append)
    undo_second = count_routine_retries(second.append)
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        warn_like_aiokafka(NotEnoughReplicasError)
        undo_first()
        clock.t += 1
        warn_like_aiokafka(NotEnoughReplicasError)
        undo_second()
        clock.t += 1
        warn_like_aiokafka(NotEnoughReplicasError)
    assert (len(first), len(second)) == (1, 2)
    assert len(caplog.records) == 1, "logged once nobody counts"
