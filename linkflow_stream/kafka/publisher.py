"""Producing records: Avro value, execution-id key, CloudEvents headers; acknowledged before return.

Awaiting the acknowledgements is what lets the orchestrator write its state only after its
events are durable, so its state is never ahead of the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from linkflow_stream.core.clock import to_millis
from linkflow_stream.kafka.codec import Codec, cloudevent_headers
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.settings import Settings

SOURCE = "/linkflow/engine"


@dataclass(frozen=True)
class Outgoing:
    """One record to produce. ``topic`` is the logical name; the settings add any prefix."""

    topic: str
    key: str
    record: BaseModel
    ce_type: str
    ce_id: str | None = None
    time: datetime | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=())


class Publisher:
    def __init__(self, settings: Settings, codec: Codec) -> None:
        self.settings = settings
        self.codec = codec
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            max_request_size=max_message_bytes(),
            enable_idempotence=True,
            linger_ms=1,
            client_id=f"{self.settings.app_id}-publisher",
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, items: Iterable[Outgoing]) -> None:
        """Produce all items, then wait until the broker has acknowledged every one."""
        producer = self._producer
        if producer is None:
            msg = "publisher not started"
            raise RuntimeError(msg)
        futures = []
        for o in items:
            headers = cloudevent_headers(
                o.ce_type, SOURCE, o.key, ce_id=o.ce_id, time=o.time, extra=o.headers
            )
            futures.append(
                await producer.send(
                    self.settings.topic(o.topic),
                    self.codec.encode(o.record),
                    key=o.key.encode(),
                    timestamp_ms=to_millis(o.time) if o.time else None,
                    headers=headers,
                )
            )
        if futures:
            await asyncio.gather(*futures)

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Produce bytes as they are: the dead-letter path for records that cannot be decoded."""
        if self._producer is None:
            msg = "publisher not started"
            raise RuntimeError(msg)
        await self._producer.send_and_wait(self.settings.topic(topic), value, key=key, headers=headers)
