"""aiokafka's retry warning: a routine refusal (NOT_ENOUGH_REPLICAS, the broker's transaction
check) is counted, anything else is still logged."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import NotEnoughReplicasError, NotLeaderForPartitionError

from linkflow_stream.kafka.produce_retries import SENDER_LOGGER, count_routine_retries

TP = TopicPartition("linkflow.events", 3)


def warn_like_aiokafka(error: object) -> None:
    logging.getLogger(SENDER_LOGGER).warning(
        "Got error produce response on topic-partition %s, retrying. Error: %s", TP, error
    )


def test_only_routine_retries_are_counted_instead_of_logged(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    undo = count_routine_retries(counted.append)
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            warn_like_aiokafka(NotEnoughReplicasError)  # aiokafka passes the class
            warn_like_aiokafka(NotEnoughReplicasError())
            warn_like_aiokafka(NotLeaderForPartitionError)
            logging.getLogger(SENDER_LOGGER).warning(
                "Got error produce response: %s", NotEnoughReplicasError()
            )
    finally:
        undo()
    assert counted == ["NotEnoughReplicasError", "NotEnoughReplicasError"]
    assert [r.getMessage() for r in caplog.records] == [
        f"Got error produce response on topic-partition {TP}, retrying. Error: {NotLeaderForPartitionError}",
        f"Got error produce response: {NotEnoughReplicasError()}",
    ]


def test_undone_the_warning_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    count_routine_retries(counted.append)()
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        warn_like_aiokafka(NotEnoughReplicasError)
    assert counted == [] and len(caplog.records) == 1
