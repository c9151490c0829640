"""The Confluent wire format beside the single-object encoding (ADR 0025): framing, the id cache
that keeps the registry off the hot path, and what happens to ids the cache does not hold.

The registry itself is exercised for real in tests/integration/test_schema_registry.py; here a
stand-in answers ``schema(id)`` so the cache's rules can be checked without a network."""

from __future__ import annotations

import json
import struct
from datetime import timedelta

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import ControlMessage, NodeTask
from linkflow_stream.kafka.codec import Codec, DecodeError, default_codec
from linkflow_stream.kafka.schema_ids import confluent_id, value_subject
from linkflow_stream.kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from linkflow_stream.kafka.topics import value_schemas
from linkflow_stream.settings import Settings

CONTROL = "io.linkflow.ControlMessage"
TASK = "io.linkflow.NodeTask"
T = from_millis(1_700_000_000_000)


class StandInRegistry(SchemaRegistryClient):
    """Answers ``schema(id)`` from a dict and counts the calls; ``down`` makes it fail as an
    unreachable registry does. Nothing else is called by the code under test."""

    def __init__(self, schemas: dict[int, str] | None = None) -> None:
        super().__init__("http://127.0.0.1:9/unused")
        self.schemas = dict(schemas or {})
        self.asked: list[int] = []
        self.down = False

    async def schema(self, schema_id: int) -> str | None:
        self.asked.append(schema_id)
        if self.down:
            raise SchemaRegistryError("connection refused", retryable=True)
        return self.schemas.get(schema_id)


def registered(registry: StandInRegistry | None = None, **subjects: int) -> Codec:
    """A codec with a registry whose ids are already known, as after ``register`` at start:
    ``subjects`` maps topic names (dots as underscores) to the ControlMessage id under them."""
    c = default_codec().with_registry(registry or StandInRegistry())
    assert c.ids is not None
    for topic, schema_id in subjects.items():
        c.ids.by_subject[value_subject(topic.replace("_", "."))] = schema_id
        c.ids.by_name[CONTROL] = schema_id
        c.ids.remember(schema_id, c.current.texts[CONTROL])
    return c


def task() -> NodeTask:
    return NodeTask(
        execution_id="e1",
        workflow_id="w",
        node_id="n",
        attempt=1,
        node_type="transform",
        config={"expression": "1"},
        input={"input": {}, "nodes": {}},
        timeout_seconds=30.0,
        lease_until=T + timedelta(seconds=35),
    )


def test_a_registered_topic_gets_magic_zero_and_the_big_endian_id() -> None:
    c = registered(p_linkflow_control=258)
    data = c.encode(ControlMessage(execution_id="e1", node_id="n"), "p.linkflow.control")
    assert data[:5] == b"\x00\x00\x00\x01\x02"
    assert confluent_id(data) == 258
    # the body is the same Avro body the single-object encoding carries after its 10-byte header
    assert data[5:] == default_codec().encode(ControlMessage(execution_id="e1", node_id="n"))[10:]
    assert c.decode(data, ControlMessage) == ControlMessage(execution_id="e1", node_id="n")


def test_a_codec_with_a_registry_reads_both_encodings() -> None:
    c = registered(p_linkflow_control=7)
    record = ControlMessage(execution_id="e1", reason="timeout")
    single_object = default_codec().encode(record)
    assert single_object[:2] == b"\xc3\x01"
    assert c.decode(single_object, ControlMessage) == record
    assert c.decode(c.encode(record, "p.linkflow.control"), ControlMessage) == record


def test_without_a_topic_or_a_registry_the_encoding_stays_single_object() -> None:
    record = ControlMessage(execution_id="e1")
    # the read model's stored states are encoded without a topic: never a registry id in a store
    assert registered(p_linkflow_control=7).encode(record)[:2] == b"\xc3\x01"
    assert default_codec().encode(record, "p.linkflow.control")[:2] == b"\xc3\x01"


def test_a_topic_registered_after_start_is_written_with_the_schemas_id_from_another_subject() -> None:
    c = registered(p_linkflow_control=11)
    data = c.encode(ControlMessage(execution_id="e1"), "p.linkflow.control.late")
    assert confluent_id(data) == 11


def test_a_record_type_no_subject_registered_stays_single_object() -> None:
    c = registered(p_linkflow_control=11)
    assert c.encode(task(), "p.linkflow.tasks.default")[:2] == b"\xc3\x01"


def test_a_codec_without_a_registry_refuses_confluent_bytes_with_the_reason() -> None:
    data = registered(p_linkflow_control=5).encode(ControlMessage(execution_id="e1"), "p.linkflow.control")
    reason = r"Confluent wire format \(schema id 5\).*LINKFLOW_SCHEMA_REGISTRY_URL"
    with pytest.raises(DecodeError, match=reason):
        default_codec().decode(data, ControlMessage)


async def test_an_unknown_id_is_fetched_once_by_learn_and_then_decodes() -> None:
    writer = registered(p_linkflow_control=42)
    data = writer.encode(ControlMessage(execution_id="e1", node_id="n"), "p.linkflow.control")
    stand_in = StandInRegistry({42: writer.current.texts[CONTROL]})
    reader = default_codec().with_registry(stand_in)
    with pytest.raises(DecodeError, match=r"schema id 42 of io\.linkflow\.ControlMessage was not fetched"):
        reader.decode(data, ControlMessage)
    await reader.learn([data, data, None, b"\xc3\x01" + bytes(8)])
    await reader.learn([data])
    assert stand_in.asked == [42]  # one call for the batch, none once known
    assert reader.decode(data, ControlMessage) == ControlMessage(execution_id="e1", node_id="n")


async def test_the_current_schema_from_the_registry_reads_without_resolution() -> None:
    c = default_codec().with_registry(StandInRegistry({3: default_codec().current.texts[CONTROL]}))
    await c.learn([b"\x00\x00\x00\x00\x03"])
    assert c.ids is not None
    assert c.ids.writers[3] is c.current.by_name[CONTROL]


async def test_an_older_writer_schema_under_an_id_resolves_against_the_current_one() -> None:
    older = json.loads(default_codec().current.texts[CONTROL])
    older["fields"] = [f for f in older["fields"] if f["name"] != "reason"]
    c = default_codec().with_registry(StandInRegistry({9: json.dumps(older)}))
    body = b"\x04e1" + b"\x00"  # execution_id "e1", node_id null: written without a reason
    data = b"\x00" + struct.pack(">I", 9) + body
    await c.learn([data])
    assert c.decode(data, ControlMessage) == ControlMessage(execution_id="e1", reason="cancelled")


async def test_an_id_the_registry_does_not_know_is_remembered_and_its_record_is_a_decode_error() -> None:
    stand_in = StandInRegistry()
    c = default_codec().with_registry(stand_in)
    data = b"\x00\x00\x00\x30\x39" + b"\x04e1\x00\x12cancelled"
    await c.learn([data])
    await c.learn([data])
    assert stand_in.asked == [12345]
    with pytest.raises(DecodeError, match=r"schema id 12345 of io\.linkflow\.ControlMessage is not known"):
        c.decode(data, ControlMessage)


async def test_learn_raises_a_retryable_error_while_the_registry_is_away_and_forgets_nothing() -> None:
    stand_in = StandInRegistry({42: default_codec().current.texts[CONTROL]})
    stand_in.down = True
    c = default_codec().with_registry(stand_in)
    data = b"\x00\x00\x00\x00\x2a" + b"\x04e1\x00\x12cancelled"
    with pytest.raises(SchemaRegistryError) as info:
        await c.learn([data])
    assert info.value.retryable is True
    assert c.ids is not None
    assert 42 not in c.ids.absent  # not "unknown": asked again next time
    stand_in.down = False
    await c.learn([data])
    assert c.decode(data, ControlMessage) == ControlMessage(execution_id="e1")


async def test_a_codec_without_a_registry_learns_nothing_and_awaits_nothing() -> None:
    await default_codec().learn([b"\x00\x00\x00\x00\x01"])  # decoding says why, later
    assert default_codec().learner is None  # consumer loops skip the call altogether
    assert registered().learner is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (b"", None),
        (b"\x00\x00\x00\x01", None),
        (b"\x00\x00\x00\x01\x00", 256),
        (b"\x00\xff\xff\xff\xff", 2**32 - 1),
        (b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00\x00", None),
    ],
)
def test_confluent_id_is_read_only_behind_magic_zero(value: bytes | None, expected: int | None) -> None:
    assert confluent_id(value) == expected


def test_every_schema_text_is_self_contained_and_has_the_files_fingerprint() -> None:
    c = default_codec()
    for name, text in c.current.texts.items():
        assert c.parse_writer(text) is c.current.by_name[name], name
        assert '"logicalType":"json"' in text or name != TASK


def test_value_schemas_names_every_record_topic_with_its_prefix_and_the_pools() -> None:
    topics = value_schemas(Settings(topic_prefix="p."), pools=["tpu"])
    assert topics["p.linkflow.events"] == "io.linkflow.ExecutionEvent"
    assert topics["p.linkflow.state.executions"] == "io.linkflow.ExecutionState"
    assert topics["p.linkflow.requests.high"] == "io.linkflow.StartExecution"
    for pool in ("default", "gpu", "tpu"):  # the declared pools' and the ones named
        for priority in ("high", "normal", "low"):
            assert topics[f"p.linkflow.tasks.{pool}.{priority}"] == TASK
    assert "p.linkflow.dlq" not in topics  # its values are other records' bytes, as they came
    assert all(name in default_codec().current.by_name for name in topics.values())
    assert value_subject("p.linkflow.events") == "p.linkflow.events-value"
