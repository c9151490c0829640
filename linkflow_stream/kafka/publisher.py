"""Producing records outside the orchestrator's transactions: the API's requests and commands,
the executor's results, worker heartbeats. Idempotent, ``acks=all``, acknowledged before return.

A caller that gets no exception knows its records are durable, so the API can answer 202 only
once a start request is in the log.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.records import encode
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.kafka.transactions import BATCH_BYTES
from linkflow_stream.settings import Settings

ACK_SECONDS = 10.0
"""Longest an HTTP request waits for Kafka to acknowledge what it sends before it answers 503
(``acknowledged_within``): a produce takes milliseconds, and a second or two on a loaded broker."""


LINGER_MS = 1
"""How long a send waits for company (more records for one produce request) when sends come
close together: under load each produce request carries several, which costs the API, the
broker and the orchestrator's fetch fewer requests per run."""
QUIET_SECONDS = 0.005
"""A send that comes this long after the one before it goes at once instead: one caller's start
request waited the whole linger for company that was not coming (ADR 0059)."""


class Overdue:
    """The sends whose caller stopped waiting (``acknowledged_within`` timed out) and that the
    Kafka client still holds, in memory, retrying until the broker takes them. While the broker
    is away a client that retries every 503 would add one for ever; at ``limit`` new sends are
    refused before they are made (``Backlogged``), so memory stays bounded and a refused caller
    knows its record was not sent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def add(self, task: asyncio.Future[None]) -> None:
        self.count += 1
        task.add_done_callback(self._done)

    def _done(self, _task: asyncio.Future[None]) -> None:
        self.count -= 1


class Backlogged(Exception):
    """A send refused unsent: ``Overdue.limit`` earlier sends are still unacknowledged."""

    def __init__(self, overdue: int) -> None:
        super().__init__(f"{overdue} earlier sends are still waiting for Kafka")
        self.overdue = overdue


class Publisher:
    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self._producer: AIOKafkaProducer | None = None
        self.overdue = Overdue(settings.max_overdue_sends)
        """The HTTP API's sends not acknowledged within ``ACK_SECONDS`` and still pending."""
        self._last_send = 0.0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            max_request_size=max_message_bytes(),
            max_batch_size=min(BATCH_BYTES, max_message_bytes()),
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            client_id=f"{self.settings.app_id}-publisher",
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            msg = "publisher not started"
            raise RuntimeError(msg)
        return self._producer

    async def send(self, items: Iterable[Outgoing]) -> None:
        """Produce all items, then wait until the broker has acknowledged every one."""
        producer = self._started()
        self._linger_by_pace(producer)
        futures = []
        for o in items:
            r = encode(self.codec, o, self.settings.topic(o.topic))
            futures.append(
                await producer.send(
                    r.topic, r.value, key=r.key, timestamp_ms=r.timestamp_ms, headers=r.headers
                )
            )
        if futures:
            await asyncio.gather(*futures)

    def _linger_by_pace(self, producer: AIOKafkaProducer) -> None:
        """No linger for a send after ``QUIET_SECONDS`` of none, ``LINGER_MS`` for one that
        follows another closely. aiokafka fixes a batch's linger when the batch is made, from one
        private attribute of its accumulator (no public setting changes it after start); without
        it every send keeps ``LINGER_MS``."""
        now = time.monotonic()
        quiet = now - self._last_send >= QUIET_SECONDS
        self._last_send = now
        accumulator: Any = getattr(producer, "_message_accumulator", None)
        if accumulator is not None and hasattr(accumulator, "_linger_time"):
            accumulator._linger_time = 0.0 if quiet else LINGER_MS / 1000  # noqa: SLF001 - as above

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Produce bytes as they are (logical ``topic``): the dead-letter path for undecodable records."""
        await self._started().send_and_wait(self.settings.topic(topic), value, key=key, headers=headers)


async def acknowledged_within(
    sending: Awaitable[None], seconds: float, overdue: Overdue | None = None
) -> None:
    """Await a send for at most ``seconds`` (``TimeoutError`` after). The Kafka client waits for a
    broker that is away for as long as it takes (metadata, then the batch's retries), which left an
    HTTP caller without an answer; the send itself goes on (shielded), so its records may still
    land later, and its outcome is retrieved then, so a failure is not reported as an exception
    never retrieved. A send that times out counts in ``overdue`` until it ends; while that is
    full, ``sending`` is not started at all (``Backlogged``)."""
    if overdue is not None and overdue.full:
        if inspect.iscoroutine(sending):
            sending.close()  # never started: nothing of it reaches the client or the log
        raise Backlogged(overdue.count)
    task = asyncio.ensure_future(sending)
    task.add_done_callback(_retrieved)
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(task)
    except TimeoutError:
        if overdue is not None and not task.done():
            overdue.add(task)
        raise


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
