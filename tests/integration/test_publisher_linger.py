"""The publisher's linger follows the pace of its sends (ADR 0059), on the real broker: a send
after a quiet spell goes at once, a send right behind another waits for company. The linger is
set to half a second here, so which of the two a send got is plain from when it is acknowledged
(a produce on this loopback broker takes milliseconds). Quiet is a second here."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.dev.testing import read_topic
from linkflow_stream.kafka import publisher as publisher_module
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.integration

LINGER_SECONDS = 0.5


def request(n: int) -> Outgoing:
    execution_id = f"exec_{uuid.uuid4().hex}"
    workflow = WorkflowDefinition(
        id="wf", created_at=now(), nodes=(NodeDefinition(id="t", type="transform"),)
    )
    start = StartExecution(execution_id=execution_id, workflow=workflow, input={"n": n}, requested_at=now())
    topic = topic_names.requests(Priority.NORMAL)
    return Outgoing(topic, execution_id, start, "io.linkflow.execution.requested")


async def acknowledged_after(publisher: Publisher, item: Outgoing) -> float:
    began = time.monotonic()
    await publisher.send([item])
    return time.monotonic() - began


async def test_a_send_after_a_quiet_spell_goes_at_once_and_one_right_behind_another_lingers(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "LINGER_MS", int(LINGER_SECONDS * 1000))
    # A quiet spell of a second, so that a send made as soon as the one before it is acknowledged
    # counts as following it closely even on a loaded broker.
    monkeypatch.setattr(publisher_module, "QUIET_SECONDS", 1.0)
    settings = Settings(bootstrap_servers=kafka, topic_prefix=f"linger-{uuid.uuid4().hex[:6]}.")
    topic = settings.topic(topic_names.requests(Priority.NORMAL))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    publisher = Publisher(settings, default_codec())
    await publisher.start()
    try:
        await publisher.send([request(0)])  # the first send learns the topic's metadata
        await asyncio.sleep(2 * publisher_module.QUIET_SECONDS)
        quiet = await acknowledged_after(publisher, request(1))
        behind = await acknowledged_after(publisher, request(2))  # right behind the one before
        await asyncio.sleep(2 * publisher_module.QUIET_SECONDS)
        quiet_again = await acknowledged_after(publisher, request(3))
    finally:
        await publisher.stop()
    assert quiet < LINGER_SECONDS / 2, f"a send after a quiet spell took {quiet:.3f}s: it lingered"
    assert behind >= LINGER_SECONDS * 0.9, f"a send right behind another took {behind:.3f}s: no linger"
    assert quiet_again < LINGER_SECONDS / 2, f"the pace was not read again: {quiet_again:.3f}s"
    records = await read_topic(kafka, topic, partitions=1)
    assert len(records) == 4, "every send landed, once"
