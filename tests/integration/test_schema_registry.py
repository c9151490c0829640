"""The schema registry client and the codec's registration against a real registry (Apicurio
Registry's Confluent-compatible API, started by the ``schema_registry`` fixture), and records in
the Confluent wire format through the real broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from fastavro.schema import to_parsing_canonical_form

from linkflow_stream.core.messages import ControlMessage
from linkflow_stream.kafka.codec import DecodeError, default_codec, fingerprint
from linkflow_stream.kafka.codecs import codec_for, register_schemas
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.schema_ids import confluent_id, value_subject
from linkflow_stream.kafka.schema_registry import SchemaRegistryClient
from linkflow_stream.kafka.topics import apply_topics, load_specs, value_schemas
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.integration

CONTROL = "io.linkflow.ControlMessage"


@pytest.fixture
async def client(schema_registry: str) -> AsyncIterator[SchemaRegistryClient]:
    c = SchemaRegistryClient(schema_registry)
    yield c
    await c.close()


def subject() -> str:
    return f"t{uuid.uuid4().hex[:10]}.linkflow.control-value"


async def test_register_is_idempotent_and_the_id_gives_the_schema_back(client: SchemaRegistryClient) -> None:
    text = default_codec().current.texts[CONTROL]
    s = subject()
    first = await client.register(s, text)
    assert await client.register(s, text) == first
    assert await client.versions(s) == [1]
    version = await client.version(s, 1)
    assert (version.id, version.subject) == (first, s)
    fetched = await client.schema(first)
    assert fetched is not None
    canonical = to_parsing_canonical_form(json.loads(fetched))
    assert fingerprint(canonical) == default_codec().current.fingerprints[CONTROL]


async def test_a_compatible_new_version_gets_its_own_id(client: SchemaRegistryClient) -> None:
    current = default_codec().current.texts[CONTROL]
    older = json.loads(current)
    older["fields"] = [f for f in older["fields"] if f["name"] != "reason"]
    s = subject()
    old_id = await client.register(s, json.dumps(older))
    new_id = await client.register(s, current)
    assert old_id != new_id
    assert await client.versions(s) == [1, 2]
    assert [(await client.version(s, v)).id for v in (1, 2)] == [old_id, new_id]


async def test_unknown_subjects_and_ids_answer_empty_not_an_error(client: SchemaRegistryClient) -> None:
    assert await client.versions(subject()) == []
    assert await client.schema(2**31 - 7) is None


async def test_register_schemas_gives_every_topic_a_subject_and_readers_learn_older_ids(
    schema_registry: str, client: SchemaRegistryClient
) -> None:
    settings = Settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}.", schema_registry_url=schema_registry)
    # an older engine wrote ControlMessages without `reason` under the subject before this one started
    older = json.loads(default_codec().current.texts[CONTROL])
    older["fields"] = [f for f in older["fields"] if f["name"] != "reason"]
    old_id = await client.register(value_subject(settings.topic("linkflow.control")), json.dumps(older))

    codec = codec_for(settings)
    try:
        ids = await register_schemas(codec, settings, pools=["gpu"])
        expected = {value_subject(t) for t in value_schemas(settings, pools=["gpu"])}
        assert set(ids) == expected
        assert codec.ids is not None
        assert old_id in codec.ids.writers  # prefetched: no fetch on the hot path for it
        data = codec.encode(ControlMessage(execution_id="e1"), settings.topic("linkflow.control"))
        assert confluent_id(data) == ids[value_subject(settings.topic("linkflow.control"))]
        old_record = b"\x00" + old_id.to_bytes(4, "big") + b"\x04e1\x00"
        assert codec.decode(old_record, ControlMessage) == ControlMessage(execution_id="e1")
    finally:
        await codec.close()

    reader = codec_for(settings)  # a reading process: registers nothing, learns ids as met
    try:
        with pytest.raises(DecodeError, match="was not fetched"):
            reader.decode(data, ControlMessage)
        await reader.learn([data, old_record])
        assert reader.decode(data, ControlMessage) == ControlMessage(execution_id="e1")
        assert reader.decode(old_record, ControlMessage) == ControlMessage(execution_id="e1")
    finally:
        await reader.close()


async def test_confluent_records_go_through_the_broker_and_decode_with_the_registrys_schema(
    kafka: str, schema_registry: str
) -> None:
    settings = Settings(
        bootstrap_servers=kafka,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        schema_registry_url=schema_registry,
    )
    await apply_topics(settings, [s for s in load_specs() if s.name == "linkflow.control"])
    topic = settings.topic("linkflow.control")
    writer = codec_for(settings)
    reader = codec_for(settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    consumer = committed_reader(kafka)
    await producer.start()
    await consumer.start()
    try:
        await register_schemas(writer, settings)
        sent = [ControlMessage(execution_id=f"e{i}", node_id=None if i % 2 else "n") for i in range(5)]
        for record in sent:
            key = record.execution_id.encode()
            await producer.send_and_wait(topic, writer.encode(record, topic), key=key)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = []
        while len(got) < len(sent):
            got += (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
        values = [r.value for r in got]
        assert all(v is not None and v[0] == 0 for v in values)
        await reader.learn(values)
        assert [reader.decode(v, ControlMessage) for v in values] == sent
    finally:
        await consumer.stop()
        await producer.stop()
        await writer.close()
        await reader.close()
