"""Routine produce retries counted, not logged as warnings.

aiokafka logs a WARNING each time the broker refuses a batch of a produce request and it sends
the batch again. One refusal is routine here: a transaction that begins right after the previous
commit on the same partition can find that commit's marker not yet written there, and the
broker's transaction check (KIP-890) tells this produce version ``NOT_ENOUGH_REPLICAS``; the
retry ``transactions.RETRY_BACKOFF_MS`` later goes through. At a few runs a second that is a
warning every few seconds, in a log an operator reads for what is wrong.

So ``NotEnoughReplicasError`` retries are counted in ``linkflow_kafka_produce_retries_total``
instead. One that is not routine, a cluster whose in-sync replicas fell below
``min.insync.replicas``, shows there as a rate, and as our own errors when the retries run out
(a commit that fails, a start answered 503). Every other retry is still logged as aiokafka logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka.errors import NotEnoughReplicasError

SENDER_LOGGER = "aiokafka.producer.sender"
RETRY_MESSAGE = "Got error produce response on topic-partition"
"""The start of aiokafka's (0.14) message for a batch it retries; its arguments are the
topic-partition and the error (a class or an instance)."""
ROUTINE: tuple[type[Exception], ...] = (NotEnoughReplicasError,)


class RoutineRetries(logging.Filter):
    """Drops aiokafka's retry warning for a routine error, and reports it to ``on_retry`` (the
    error's class name)."""

    def __init__(self, on_retry: Callable[[str], None]) -> None:
        super().__init__()
        self.on_retry = on_retry

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(RETRY_MESSAGE)):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        error = args[-1] if args else None
        kind = error if isinstance(error, type) else type(error)
        if not issubclass(kind, ROUTINE):
            return True
        self.on_retry(kind.__name__)
        return False


def count_routine_retries(on_retry: Callable[[str], None]) -> Callable[[], None]:
    """Count routine retries with ``on_retry`` instead of logging them; returns the undo."""
    sender = logging.getLogger(SENDER_LOGGER)
    routine = RoutineRetries(on_retry)
    sender.addFilter(routine)
    return lambda: sender.removeFilter(routine)
