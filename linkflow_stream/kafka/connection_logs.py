"""aiokafka's connection errors, condensed: the first of a kind, then one line per window.

Every client of a process (the views' readers, the orchestrator's consumer and producers, the
executor's pools, the publisher) tries a lost broker again every few tens of milliseconds, and
aiokafka logs each failed try at ERROR. With the broker away that was about 1,000 lines a second,
26 MB in three minutes, burying what an operator needs to read. What the lines say is one fact,
"the broker cannot be reached", which ``linkflow_kafka_brokers`` and ``/readyz`` show as well.

So each kind of connection error (aiokafka's message template) is logged the first time, and
then once per ``WINDOW_SECONDS`` at most, that line saying how many like it were not shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WINDOW_SECONDS = 30.0

LOGGERS = (
    "aiokafka",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.sender",
)
"""Where aiokafka (0.14) logs a failed connection or metadata request (its client module logs as
``aiokafka``), a failed fetch, a group's lost coordinator, and a failed produce."""

TEMPLATES = frozenset(
    {
        'Unable connect to "%s:%s": %s',
        'Unable to request metadata from "%s:%s": %s',
        "Unable to request metadata from node with id %s: %r",
        "Unable to update metadata from %s",
        "Unable connect to node with id %s: %s",
        "Failed fetch messages from %s: %s",
        # every consumer group's coordinator and every producer, tried again and again: about 50
        # lines a second from a running engine with its broker away (measured, session 17)
        "Group Coordinator Request failed: %s",
        "Heartbeat send request failed: %s. Will retry.",
        "Heartbeat session expired - marking coordinator dead",
        "Auto offset commit failed: %s",
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "Marking the coordinator dead (node %s)for group %s.",
        "Got error produce response: %s",
    }
)


class CondensedConnectionErrors(logging.Filter):
    """Lets through the first record of each template in ``TEMPLATES`` and then one per window,
    with the count of those dropped meanwhile; every other record passes as it is."""

    def __init__(self, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._shown: dict[str, float] = {}
        """Per template, when a record of it was last let through."""
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg
        if not isinstance(template, str) or template not in TEMPLATES:
            return True
        now = self.clock()
        shown = self._shown.get(template)
        if shown is not None and now - shown < self.window:
            self._dropped[template] = self._dropped.get(template, 0) + 1
            return False
        self._shown[template] = now
        dropped = self._dropped.pop(template, 0)
        if dropped:
            record.msg = (
                f"{record.getMessage()} ({dropped} more like it in the last {self.window:g} s not shown)"
            )
            record.args = ()
        return True


def condense_connection_errors(window: float = WINDOW_SECONDS) -> CondensedConnectionErrors:
    """Install one filter on each of aiokafka's loggers in ``LOGGERS`` (the process's, shared by
    every client); returns it."""
    condensed = CondensedConnectionErrors(window)
    for name in LOGGERS:
        logging.getLogger(name).addFilter(condensed)
    return condensed
