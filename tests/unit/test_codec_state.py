"""Records that carry a run's workflow snapshot (states, events, start requests) are encoded
around the workflow's cached bytes: the same bytes as encoding the whole record at once (ADR
0039, 0041). Decoding shares one workflow object between copies of the same definition."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest
from pydantic import BaseModel

from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.kafka import codec as codec_module
from linkflow_stream.kafka.codec import CARRIES_WORKFLOW, NAMESPACE, Codec, default_codec
from tests.unit.test_partition_batch import HTTP, T0, TRANSFORM, WAIT, FakeProducer, partition, start_record


async def batch_records() -> tuple[list[Any], list[Any]]:
    """The start requests of three runs and every record their first batch committed."""
    producer = FakeProducer()
    p = partition(producer)
    starts = [start_record(0, TRANSFORM, "t"), start_record(1, HTTP, "h"), start_record(2, WAIT, "w")]
    await p.run_batch(starts, T0)
    return starts, [r for records, _ in producer.committed for r in records]


async def carried() -> list[BaseModel]:
    """States, events and start requests of three runs, decoded from what a batch wrote."""
    codec = default_codec()
    starts, written = await batch_records()
    found: list[BaseModel] = [codec.decode(r.value, StartExecution) for r in starts]
    for r in written:
        if r.value is not None and r.topic.endswith("state.executions"):
            found.append(codec.decode(r.value, ExecutionState))
        elif r.value is not None and r.topic.endswith("events"):
            found.append(codec.decode(r.value, ExecutionEvent))
    return found


def whole(codec: Codec, record: BaseModel) -> bytes:
    return codec.encode_dict(f"{NAMESPACE}.{type(record).__name__}", record.model_dump())


async def test_every_record_carrying_a_workflow_encodes_to_the_same_bytes_as_the_whole_record() -> None:
    codec = default_codec()
    for model in CARRIES_WORKFLOW:
        assert codec.compiled(f"{NAMESPACE}.{model.__name__}"), model
    found = await carried()
    kinds = {type(r) for r in found}
    assert kinds == set(CARRIES_WORKFLOW), kinds
    with_workflow = [r for r in found if isinstance(r, ExecutionEvent) and r.workflow is not None]
    assert with_workflow, "an execution_created event carries the snapshot"
    assert any(isinstance(r, ExecutionEvent) and r.workflow is None for r in found)
    for record in found:
        expected = whole(codec, record)
        assert codec.encode(record) == expected, type(record)
        assert codec.encode(record) == expected, "again, from the cached workflow bytes"
        assert codec.decode(codec.encode(record), type(record)) == record


async def test_a_new_workflow_object_is_encoded_afresh() -> None:
    codec = default_codec()
    state = next(r for r in await carried() if isinstance(r, ExecutionState) and r.workflow.nodes)
    renamed = state.model_copy(update={"workflow": state.workflow.model_copy(update={"name": "other"})})
    codec.encode(state)
    assert codec.decode(codec.encode(renamed), ExecutionState).workflow.name == "other"


async def test_decoded_copies_of_one_definition_share_one_workflow_object() -> None:
    """A run's start request, its first event and a live run's state carry the same snapshot:
    decoded, they hold one object (validated once; its bytes and node index kept once). A finished
    run's changelog record is its marker, whose definition has no nodes (ADR 0071)."""
    codec = Codec(default_codec().current)
    found = await carried()
    by_run: dict[str, list[Any]] = {}
    for record in found:
        workflow = getattr(record, "workflow", None)
        if workflow is not None and workflow.nodes:
            again = codec.decode(codec.encode(record), type(record))
            by_run.setdefault(getattr(record, "execution_id", None) or record.id, []).append(again.workflow)  # type: ignore[attr-defined]
    assert sorted(by_run) == ["h", "t", "w"]
    for run, copies in by_run.items():
        ended = run == "t"  # the transform's run ended in its first batch: its state is a marker
        assert len(copies) >= (2 if ended else 3), "request, execution_created and a live run's state"
        assert all(c is copies[0] for c in copies)
    markers = [r for r in found if isinstance(r, ExecutionState) and not r.workflow.nodes]
    assert [(m.id, m.status.value, m.nodes) for m in markers] == [("t", "success", {})]


async def test_a_different_definition_under_the_same_id_and_version_is_not_shared() -> None:
    """Sharing goes by the decoded fields, not by (id, version): a definition changed without a
    new version (another deployment's topics, a test's fixture) keeps its own nodes."""
    codec = Codec(default_codec().current)
    request = next(r for r in await carried() if isinstance(r, StartExecution))
    changed = request.model_copy(
        update={"workflow": request.workflow.model_copy(update={"name": f"{request.workflow.name}-changed"})}
    )
    first = codec.decode(codec.encode(request), StartExecution)
    other = codec.decode(codec.encode(changed), StartExecution)
    assert other.workflow is not first.workflow
    assert other.workflow.name == changed.workflow.name
    assert codec.decode(codec.encode(request), StartExecution).workflow == request.workflow


async def test_large_definitions_used_once_are_not_kept_beyond_the_caches_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many large definitions, each carried by one run and then let go: what the codec and the
    node indexes keep of them stays near the byte bound. Bounded by count alone, the caches kept
    hundreds of them (a definition may be a megabyte), and the node indexes a thousand."""
    monkeypatch.setattr(codec_module, "WORKFLOW_CACHE_BYTES", 1024 * 1024)
    codec = Codec(default_codec().current)
    state = next(r for r in await carried() if isinstance(r, ExecutionState) and r.workflow.nodes)

    def carry_once(i: int) -> None:
        workflow = state.workflow.model_copy(update={"id": f"big-{i}", "name": f"{i:06d}" * 40_000})
        decoded = codec.decode(codec.encode(state.model_copy(update={"workflow": workflow})), ExecutionState)
        assert decoded.workflow.node(workflow.nodes[0].id) == workflow.nodes[0]
        assert decoded.workflow.name == workflow.name

    carry_once(0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 81):  # 80 definitions of 240 kB
            carry_once(i)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 8 * 1024 * 1024, f"{kept / 1e6:.1f} MB kept after 80 definitions of 240 kB were let go"
