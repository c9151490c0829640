"""The signal intake: ``linkflow.signals`` (``io.linkflow.Signal`` records, Avro or JSON, from any
producer) into ``signal`` commands on ``linkflow.commands`` (ADR 0035).

Each record becomes one command per run it reaches (``runtime/signals.py``): the run it names,
or, for a broadcast, every run the views show waiting on its name and correlation key once
synced with the log. Offsets are committed only after those commands are acknowledged, so a
crash reads a record again; its signal id (the producer's, else ``kafka-<partition>-<offset>``)
is the same the second time, and a run takes an id once: exactly once per run.

A record that is not a signal, or names a run that does not exist, goes to ``linkflow.dlq``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Signal
from linkflow_stream.core.signals import key_text, signal_names
from linkflow_stream.core.state import ExecutionStatus
from linkflow_stream.core.strict_json import non_finite
from linkflow_stream.kafka.codec import Codec, DecodeError, decode_json, looks_like_json
from linkflow_stream.kafka.consumers import group_reader
from linkflow_stream.kafka.dlq import dead_letter
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.nodes.wait_event import SIGNAL_NAME
from linkflow_stream.runtime.signals import broadcast_targets, signal_command
from linkflow_stream.settings import Settings
from projections.status import StatusView

log = logging.getLogger(__name__)

SYNC_SECONDS = 5.0
"""Longest wait for the views to read the log to its end before a look-up is trusted."""
START_WAIT_SECONDS = 10.0
"""Longest wait for an accepted run to start before its signal is sent (the orchestrator drops
a command for a run it has no state of)."""


def _numeric_key_as_text(data: Any) -> Any:
    """A broadcast's numeric ``correlation_key`` as its JSON text, as a waiting node keys it."""
    if isinstance(data, dict) and isinstance(data.get("correlation_key"), int | float):
        return {**data, "correlation_key": key_text(data["correlation_key"])}
    return data


def decode_signal(codec: Codec, value: bytes | None) -> Signal:
    """A ``Signal`` from Avro (single-object or Confluent), or a JSON object with its fields."""
    if value is None:
        raise DecodeError("a signal needs a value; this record has none (a tombstone)")
    if looks_like_json(value):
        signal = decode_json(value, Signal, "signal", _numeric_key_as_text)
    else:
        signal = codec.decode(value, Signal)
    if not SIGNAL_NAME.match(signal.name):
        raise DecodeError(f"signal name {signal.name!r} must match {SIGNAL_NAME.pattern}")
    if non_finite(signal.payload) is not None:  # an Avro record's JSON text may hold one
        raise DecodeError("not a signal: payload holds NaN or Infinity, which JSON has not")
    if (signal.execution_id is None) == (signal.correlation_key is None):
        raise DecodeError(
            "a signal names exactly one of execution_id (one run) or correlation_key (a broadcast)"
        )
    return signal


class SignalIntake:
    """The consumer of ``linkflow.signals`` (group ``<app>.signals``) and its loop."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        publisher: Publisher,
        status: StatusView,
        find: Callable[[str], Awaitable[dict[str, Any] | None]],
        sync: Callable[[float], Awaitable[bool]],
        on_dead_letter: Callable[[str], None] = lambda _topic: None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.publisher = publisher
        self.status = status
        self.find = find
        """A run's body from the views (memory, then the read-model store)."""
        self.sync = sync
        self.on_dead_letter = on_dead_letter
        self.delivered = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        consumer = group_reader(s, s.group("signals"), "signals")
        consumer.subscribe([s.topic(topic_names.SIGNALS)])
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="signal-intake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        """Kept alive: on an error nothing of the batch is committed, and it is read again."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("signal intake failed; reading again from the last commit in 1 s")
                consumer = self._consumer
                if consumer is not None:
                    for tp in consumer.assignment():
                        committed = await consumer.committed(tp)
                        if committed is not None:
                            consumer.seek(tp, committed)
                        else:
                            await consumer.seek_to_beginning(tp)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            if not batches:
                continue
            if self.codec.ids is not None:
                await self.codec.learn([r.value for records in batches.values() for r in records])
            for records in batches.values():
                for record in records:
                    await self._deliver(record)
            await consumer.commit()

    async def _deliver(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            signal = decode_signal(self.codec, record.value)
        except DecodeError as exc:
            await self._dead_letter(record, str(exc))
            return
        if signal.id is None:
            signal = signal.model_copy(update={"id": f"kafka-{record.partition}-{record.offset}"})
        if signal.execution_id is not None:
            status = await self._status_of(signal.execution_id)
            if status is None:
                await self._dead_letter(record, f"no run {signal.execution_id!r} to signal")
                return
            if status.terminal:  # as the API's 409: in the dead-letter topic, not only a log line
                await self._dead_letter(
                    record, f"execution {signal.execution_id!r} already ended ({status.value})"
                )
                return
            state = self.status.known(signal.execution_id)
            takes = signal_names(state.workflow) if state else []
            if state is not None and signal.name not in takes:  # the run would keep it for ever
                reason = (
                    f"no wait_event node of workflow {state.workflow.id!r} waits on signal {signal.name!r}"
                )
                await self._dead_letter(record, f"{reason} (it takes {takes or 'none'})")
                return
            targets = [signal.execution_id]
        else:
            await self.sync(SYNC_SECONDS)
            targets = broadcast_targets(self.status, signal)
        await self.publisher.send([signal_command(t, signal) for t in targets])
        self.delivered += len(targets)
        log.info(
            "signal %s (%s) from %s@%d to %d run(s)",
            signal.name,
            signal.id,
            record.topic,
            record.offset,
            len(targets),
        )

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        await dead_letter(self.publisher, record, reason)
        self.on_dead_letter(topic_names.SIGNALS)

    async def _status_of(self, execution_id: str) -> ExecutionStatus | None:
        """The run's status, ``None`` if the views, synced, know no such run. An accepted run is
        given a moment to start: its command would find no state to apply to before."""
        body = await self.find(execution_id)
        if body is None:
            await self.sync(SYNC_SECONDS)
            body = await self.find(execution_id)
        if body is None:
            return None
        status = ExecutionStatus(body["status"])
        if status is ExecutionStatus.PENDING and await self.status.wait_started(
            execution_id, START_WAIT_SECONDS
        ):
            body = await self.find(execution_id)  # started, or its start was rejected
            status = ExecutionStatus(body["status"]) if body is not None else status
        return status
