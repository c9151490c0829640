"""Routine produce retries counted, not logged as warnings.

aiokafka logs a WARNING each time the broker refuses a batch of a produce request and it sends
the batch again. One refusal is routine here: a transaction that begins right after the previous
commit on the same partition can find that commit's marker not yet written there, and the
broker's transaction check (KIP-890) tells this produce version ``NOT_ENOUGH_REPLICAS``; the
retry ``transactions.RETRY_BACKOFF_MS`` later goes through. At a few runs a second that is a
warning every few seconds, in a log an operator reads for what is wrong.

So ``NotEnoughReplicasError`` retries are counted in ``linkflow_kafka_produce_retries_total``
and not logged, unless a topic-partition's refusals make a streak (each within
``STREAK_GAP_SECONDS`` of the one before) longer than ``STREAK_SECONDS``: the routine refusal
goes through on its first retry or few (the marker lands within milliseconds, now and then
within a hundred, on a loaded broker within a second or two), so a streak that long means the
same batch refused again and again, every 20 ms: a cluster whose in-sync replicas fell below
``min.insync.replicas``. From then on they are logged as aiokafka logs them. Every other retry
is logged as before.

One filter serves the process (aiokafka's logger is the process's); each engine subscribes its
counter.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka.errors import NotEnoughReplicasError

SENDER_LOGGER = "aiokafka.producer.sender"
RETRY_MESSAGE = "Got error produce response on topic-partition"
"""The start of aiokafka's (0.14) message for a batch it retries; its arguments are the
topic-partition and the error (a class or an instance)."""
ROUTINE: tuple[type[Exception], ...] = (NotEnoughReplicasError,)
STREAK_GAP_SECONDS = 0.1
"""Refusals of one topic-partition this close one after the other make a streak (a batch refused
again and again is retried every 20 ms)."""
STREAK_SECONDS = 10.0
"""A streak this long is no marker on its way: logged, well before the commit gives up
(``transactions.COMMIT_TIMEOUT_SECONDS``, 30). Routine refusals end within 100 ms as a rule, but
a loaded broker (a CI machine running a test suite) was seen to keep one batch refused for over a
second."""

Subscriber = Callable[[str], None]


class RoutineRetries(logging.Filter):
    """Counts aiokafka's retry warnings for a routine error with every subscriber (the error's
    class name), and drops them unless they come in a streak."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.subscribers: list[Subscriber] = []
        self.clock = clock
        self._streaks: dict[str, tuple[float, float]] = {}
        """Per topic-partition, when its streak of routine retries began and its last was seen."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(RETRY_MESSAGE)):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        error = args[-1] if args else None
        kind = error if isinstance(error, type) else type(error)
        if not issubclass(kind, ROUTINE):
            return True
        for subscriber in list(self.subscribers):
            subscriber(kind.__name__)
        where, now = str(args[0]) if len(args) > 1 else "", self.clock()
        began, last = self._streaks.get(where, (now, None))
        if last is None or now - last >= STREAK_GAP_SECONDS:
            began = now
        self._streaks[where] = (began, now)
        return now - began >= STREAK_SECONDS


_FILTER = RoutineRetries()


def count_routine_retries(subscriber: Subscriber) -> Callable[[], None]:
    """Count routine retries with ``subscriber`` instead of logging them; returns the undo (the
    filter stays on aiokafka's logger while anyone subscribes)."""
    sender = logging.getLogger(SENDER_LOGGER)
    _FILTER.subscribers.append(subscriber)
    if _FILTER not in sender.filters:
        sender.addFilter(_FILTER)

    def undo() -> None:
        with contextlib.suppress(ValueError):  # undone already
            _FILTER.subscribers.remove(subscriber)
        if not _FILTER.subscribers:
            sender.removeFilter(_FILTER)

    return undo
