"""A state is encoded as its id, its workflow's cached bytes and the rest of its fields: the same
bytes as encoding the whole record at once (ADR 0039)."""

from __future__ import annotations

from linkflow_stream.core.state import ExecutionState
from linkflow_stream.kafka.codec import STATE, default_codec
from tests.unit.test_partition_batch import HTTP, T0, TRANSFORM, WAIT, FakeProducer, partition, start_record


async def states() -> list[ExecutionState]:
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch(
        [start_record(0, TRANSFORM, "t"), start_record(1, HTTP, "h"), start_record(2, WAIT, "w")], T0
    )
    codec = default_codec()
    return [
        codec.decode(value, ExecutionState)
        for records, _ in producer.committed
        for r in records
        if (value := r.value) is not None and r.topic.endswith("state.executions")
    ]


async def test_a_state_encodes_to_the_same_bytes_as_the_whole_record_and_back() -> None:
    codec = default_codec()
    assert codec.current.state_rest is not None, "the state is encoded in parts"
    found = await states()
    assert len(found) == 3
    for state in found:
        whole = codec.encode_dict(STATE, state.model_dump())
        assert codec.encode(state) == whole
        assert codec.encode(state) == whole, "again, from the cached workflow bytes"
        assert codec.decode(codec.encode(state), ExecutionState) == state


async def test_a_new_workflow_object_is_encoded_afresh() -> None:
    codec = default_codec()
    state = (await states())[0]
    renamed = state.model_copy(update={"workflow": state.workflow.model_copy(update={"name": "other"})})
    codec.encode(state)
    assert codec.decode(codec.encode(renamed), ExecutionState).workflow.name == "other"
