"""How long a consumer's fetch waits at the broker: briefly only while it leaves a partition out.

A fetch waits at the broker until a record it asks for is readable (a ``read_committed`` fetch is
answered when a commit marker makes records readable) or ``fetch_max_wait_ms`` has passed.
aiokafka keeps one fetch in flight per broker, so a partition left out of the fetch in flight
(its fetched records not all taken yet, or paused) is fetched again only when that fetch ends:
records arriving for it meanwhile wait out the whole wait. That is why the busiest consumers
waited 5-50 ms, and why an idle engine asked the broker about 230 times a second, for nothing:
0.24 cores of its own and 0.19 of the broker's, a fifth of this two-core machine, running all
month long (docs/performance.md, round 3).

``wait_adaptively`` keeps the consumer's configured (short) wait only for a fetch that leaves a
partition out. A fetch that asks for every assigned partition, which an idle consumer's always
does, waits up to ``IDLE_WAIT_MS``: a record for any of them ends the wait, so records that
arrive are not held. What can wait up to ``IDLE_WAIT_MS`` now is a request made while such a
fetch is in flight: a seek's fetch from the new position, and an offset lookup on the same
connection (aiokafka sends nothing more to a broker with a fetch in flight, and the broker
answers a connection's requests one at a time). The orchestrator seeks only when it rewinds
after a failed batch, and a ``LogReader`` looks its end offsets up with a consumer of its own.

It wraps one private method of aiokafka's fetcher, on one consumer (there is no public hook;
aiokafka is pinned in ``pyproject.toml``, and ``tests/integration/test_fetch_wait.py`` fails if
the hook goes away). A consumer the hook cannot be put on keeps its fixed short wait.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

IDLE_WAIT_MS = 500
"""The wait of a fetch that leaves no partition out: Kafka's default ``fetch.max.wait.ms``."""


def wait_adaptively(consumer: AIOKafkaConsumer, idle_ms: int = IDLE_WAIT_MS) -> bool:
    """Let the started ``consumer`` keep its configured ``fetch_max_wait_ms`` (the busy wait) for
    a fetch that leaves a partition out, and wait ``idle_ms`` for one that does not. False (the
    configured wait stays for every fetch) when aiokafka has no such hook."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    actions = getattr(fetcher, "_get_actions_per_node", None)
    busy_ms = getattr(fetcher, "_fetch_max_wait_ms", None)
    if actions is None or busy_ms is None or not hasattr(fetcher, "_records"):
        log.warning("aiokafka's fetcher has no wait hook: fetches keep their configured wait")
        return False

    def actions_per_node(assignment: Any) -> Any:
        # Records fetched but not all taken, or a paused partition: the next fetch leaves it out.
        left_out = bool(fetcher._records) or any(  # noqa: SLF001 - the hook this module is for
            assignment.state_value(tp).paused for tp in assignment.tps
        )
        fetcher._fetch_max_wait_ms = busy_ms if left_out else idle_ms  # noqa: SLF001 - as above
        return actions(assignment)

    fetcher._get_actions_per_node = actions_per_node  # noqa: SLF001 - as above
    return True
