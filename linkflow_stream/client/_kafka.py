"""Starting runs by producing: the ``io.linkflow.StartRequest`` contract on ``linkflow.start``.

For producers that talk to Kafka rather than the API (ADR 0023): the record is acknowledged by
every in-sync replica (``acks=all``, idempotent producer) before this returns, and the engine's
start intake turns it into exactly one run, also when it is sent again. The run's id is known
here when the caller names it (``execution_id``) or gives no idempotency key (the id then derives
from the record's position); a keyed start's id depends on the workflow's team, which only the
engine knows, so it is read back over HTTP with the same ``Idempotency-Key``.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.start_request import Origin, StartRequest, check_execution_id, position_id
from linkflow_stream.kafka.codec import default_codec


async def start_via_kafka(
    bootstrap_servers: str,
    workflow_id: str,
    input_data: Any = None,
    *,
    priority: str = "normal",
    workflow_version: int | None = None,
    idempotency_key: str | None = None,
    execution_id: str | None = None,
    topic_prefix: str = "",
) -> str | None:
    """Produce one start request; the run's id (``None`` for a keyed start, see above)."""
    if execution_id is not None:
        check_execution_id(execution_id)
    request = StartRequest(
        workflow_id=workflow_id,
        workflow_version=workflow_version,
        input={} if input_data is None else input_data,
        priority=Priority(priority),
        idempotency_key=idempotency_key,
        execution_id=execution_id,
    )
    topic = f"{topic_prefix}{topic_names.START}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, default_codec().encode(request))
    finally:
        await producer.stop()
    if execution_id is not None:
        return execution_id
    if idempotency_key is not None:
        return None
    return position_id(Origin(sent.topic, sent.partition, sent.offset, sent.timestamp))
