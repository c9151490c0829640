"""aiokafka's connection errors are condensed: the first of a kind, then one per window with the
count of those not shown; every other record passes untouched."""

from __future__ import annotations

import logging

from linkflow_stream.kafka.connection_logs import (
    LOGGERS,
    CondensedConnectionErrors,
    condense_connection_errors,
)


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.client", logging.ERROR, __file__, 1, msg, args, None)


def test_one_line_per_kind_and_window_saying_how_many_were_not_shown() -> None:
    now = [0.0]
    condensed = CondensedConnectionErrors(window=30.0, clock=lambda: now[0])
    connect = "Unable connect to node with id %s: %s"
    first = record(connect, 1, "refused")
    assert condensed.filter(first) and first.getMessage() == "Unable connect to node with id 1: refused"
    shown = []
    for i in range(1000):  # a thousand tries within the window, as every client retries
        now[0] = i * 0.02
        shown.append(condensed.filter(record(connect, 1, "refused")))
    assert not any(shown)
    other = record("Unable to update metadata from %s", [1])
    assert condensed.filter(other), "another kind has its own window"
    now[0] = 31.0
    later = record(connect, 1, "refused")
    assert condensed.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: refused (1000 more like it in the last 30 s not shown)"
    )
    assert not condensed.filter(record(connect, 1, "refused")), "a new window began"


def test_other_records_pass_as_they_are() -> None:
    condensed = CondensedConnectionErrors(window=30.0, clock=lambda: 0.0)
    for _ in range(3):
        plain = record("Heartbeat failed for group %s", "g")
        assert condensed.filter(plain) and plain.getMessage() == "Heartbeat failed for group g"


def test_the_group_coordinators_and_producers_retries_are_condensed_too() -> None:
    """A running engine with its broker away logged about 50 lines a second from its consumer
    groups' coordinators and its producers (session 17): their loggers get the filter, and their
    messages are among the kinds it condenses."""
    condensed = condense_connection_errors()
    try:
        for name, msg in (
            ("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed: %s"),
            ("aiokafka.producer.sender", "Got error produce response: %s"),
        ):
            assert condensed in logging.getLogger(name).filters
            records = [
                logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("away",), None) for _ in range(50)
            ]
            assert [condensed.filter(r) for r in records].count(True) == 1
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeFilter(condensed)
