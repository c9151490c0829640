"""How many brokers the Kafka cluster lists, watched: the engine's metrics show a broker lost
(and back) as it happens, not when some client first trips over it.

A broker is listed while it is registered and not fenced. The controller fences one that stops
heartbeating (kill -9, a network partition) once its broker session times out, and from then on
every broker's metadata leaves it out; a broker that comes back is listed again once registered.
Each look is one metadata request for no topics (a broker with thousands of topics answers it as
cheaply as an empty one) on a short-lived connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 2.0
"""How often the brokers are counted: a lost broker shows within this of being fenced."""


LOOK_SECONDS = 5.0
"""Longest one count may take; a broker that answers at all answers a metadata request in
milliseconds."""


class BrokerWatch:
    """Counts the brokers the cluster lists, every ``interval`` seconds, and reports the count."""

    def __init__(
        self,
        bootstrap_servers: str,
        report: Callable[[int], None],
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.report = report
        self.interval = interval
        self._listed: str | None = None
        """The brokers the last answer listed: asked first next time, so a broker that is gone
        and fenced is not tried (and logged as unreachable) again and again."""

    async def count(self) -> int:
        """The brokers the cluster lists now; 0 when no broker answers."""
        for servers in dict.fromkeys(s for s in (self._listed, self.bootstrap_servers) if s):
            client = AIOKafkaClient(bootstrap_servers=servers, client_id="linkflow-broker-watch")
            try:
                await client.bootstrap()  # one metadata request for no topics
                brokers = client.cluster.brokers()
            except KafkaConnectionError:
                continue
            finally:
                await client.close()
            self._listed = ",".join(f"{b.host}:{b.port}" for b in brokers) or None
            return len(brokers)
        return 0

    async def run(self) -> None:
        """Count and report until cancelled; a failed look is logged and the next one tried. A look
        that takes longer than ``LOOK_SECONDS`` counts as none answering: a broker whose packets
        are dropped (a partition, not a refused connection) would hold a connect for 40 s, while
        the last count, and readiness, said all was well."""
        while True:
            try:
                async with asyncio.timeout(LOOK_SECONDS):
                    count = await self.count()
            except TimeoutError:
                self.report(0)
            except (KafkaError, OSError) as exc:
                log.warning("could not count the brokers: %r", exc)
            else:
                self.report(count)
            await asyncio.sleep(self.interval)
