"""The workflow view (ADR 0048): the latest definition of each workflow in memory, a line for
every version, and an older version read back from its record when asked for."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition, same_definition
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.consumers import LogUnavailable
from projections import workflows
from projections.workflows import WorkflowView, version_key
from tests.unit.conftest import at

CODEC = default_codec()


def workflow(version: int, nodes: int = 1, wf_id: str = "wf") -> WorkflowDefinition:
    return WorkflowDefinition(
        id=wf_id,
        version=version,
        name=f"v{version}",
        nodes=tuple(
            NodeDefinition(id=f"n{i}", type="transform", config={"expression": f"{version}"})
            for i in range(nodes)
        ),
        created_at=at(version),
    )


class Log:
    """A partition's records by offset, and every read the view makes of it."""

    def __init__(self) -> None:
        self.records: dict[tuple[int, int], bytes] = {}
        self.reads: list[tuple[int, int]] = []

    def put(self, wf: WorkflowDefinition, offset: int) -> tuple[int, int]:
        self.records[(0, offset)] = CODEC.encode(wf)
        return (0, offset)

    async def load(self, partition: int, offset: int) -> bytes | None:
        self.reads.append((partition, offset))
        return self.records.get((partition, offset))

    def view(self) -> WorkflowView:
        return WorkflowView(self.load, lambda value: CODEC.decode(value, WorkflowDefinition))


def test_a_record_per_version() -> None:
    assert version_key("wf", 3) == "wf@3"
    assert version_key("wf", 3) != version_key("wf", 4)


async def test_older_versions_are_lines_in_memory_and_read_back_from_the_log() -> None:
    log = Log()
    view = log.view()
    for version in (1, 2, 3):
        view.apply(workflow(version, nodes=version), log.put(workflow(version, nodes=version), 10 + version))
    assert [(v.version, v.nodes, v.name, v.created_at) for v in view.versions_of("wf")] == [
        (3, 3, "v3", at(3)),
        (2, 2, "v2", at(2)),
        (1, 1, "v1", at(1)),
    ]
    assert view.versions_of("nope") == []
    latest = view.get("wf")
    assert latest is not None and latest.version == 3
    assert await view.version("wf", 3) is latest and log.reads == [], "the latest is in memory"
    first = await view.version("wf", 1)
    assert first == workflow(1, nodes=1) and log.reads == [(0, 11)]
    assert await view.version("wf", 1) is first and log.reads == [(0, 11)], "read once, then cached"
    assert await view.version("wf", 7) is None and await view.version("nope", 1) is None
    assert log.reads == [(0, 11)], "a version never registered is not looked for"


async def test_a_version_whose_record_is_gone_or_replaced_is_not_found() -> None:
    log = Log()
    view = log.view()
    view.apply(workflow(1), (0, 1))  # keyed by id before ADR 0048: compacted away since
    view.apply(workflow(2), log.put(workflow(3), 2))  # the offset holds another version's record
    view.apply(workflow(4), log.put(workflow(4), 3))
    assert await view.version("wf", 1) is None
    assert await view.version("wf", 2) is None
    assert log.reads == [(0, 1), (0, 2)]


async def test_a_version_published_here_is_found_before_the_log_is_read_back() -> None:
    log = Log()
    view = log.view()
    v1, v2 = workflow(1), workflow(2)
    view.apply(v1)  # the API's own publish: no position yet
    view.apply(v2)
    assert await view.version("wf", 1) is v1 and [v.version for v in view.versions_of("wf")] == [2, 1]
    view.apply(v1, log.put(v1, 0))  # the reader folds it: now a line like any other
    view.apply(v1)  # a late local apply does not take the line's position away
    found = await view.version("wf", 1)
    assert found == v1 and found is not v1 and log.reads == [(0, 0)]


async def test_a_version_written_again_is_read_from_its_later_record() -> None:
    """Two instances raced for the same version number: the later record is the version."""
    log = Log()
    view = log.view()
    view.apply(workflow(1), log.put(workflow(1, nodes=1), 0))
    view.apply(workflow(2), log.put(workflow(2), 1))
    assert (await view.version("wf", 1)) == workflow(1, nodes=1)
    again = workflow(1, nodes=2)
    view.apply(again, log.put(again, 2))
    assert (await view.version("wf", 1)) == again and log.reads == [(0, 0), (0, 2)]


async def test_older_versions_read_back_are_kept_up_to_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log()
    view = log.view()
    for version in range(1, 12):
        view.apply(workflow(version, nodes=20), log.put(workflow(version, nodes=20), version))
    size = max(len(value) for value in log.records.values())
    monkeypatch.setattr(workflows, "OLD_VERSION_CACHE_BYTES", size * 3)
    for version in range(1, 11):
        assert (await view.version("wf", version)) is not None
    assert len(log.reads) == 10
    assert len(definitions_in(vars(view))) == 4, "the latest and three read back"
    await view.version("wf", 8)  # used again: now the most recent
    assert len(log.reads) == 10
    await view.version("wf", 7)  # read again: makes room by dropping the least recently used, 9
    await view.version("wf", 8)
    await view.version("wf", 10)
    assert log.reads[10:] == [(0, 7)]
    await view.version("wf", 9)
    assert log.reads[10:] == [(0, 7), (0, 9)]


async def test_callers_asking_for_the_same_version_at_once_share_one_read() -> None:
    log = Log()
    release = asyncio.Event()
    view = log.view()
    view.apply(workflow(1), log.put(workflow(1), 0))
    view.apply(workflow(2), log.put(workflow(2), 1))

    async def slow(partition: int, offset: int) -> bytes | None:
        await release.wait()
        return await log.load(partition, offset)

    view._load = slow
    waiting = [asyncio.ensure_future(view.version("wf", 1)) for _ in range(5)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # one caller gives up: the read goes on for the others
    release.set()
    found = await asyncio.gather(*waiting[1:])
    assert all(wf == workflow(1) for wf in found) and log.reads == [(0, 0)]


async def test_a_failed_read_reaches_every_caller_and_the_next_ask_reads_again() -> None:
    log = Log()
    view = log.view()
    view.apply(workflow(1), log.put(workflow(1), 0))
    view.apply(workflow(2), log.put(workflow(2), 1))
    broken = True

    async def flaky(partition: int, offset: int) -> bytes | None:
        await asyncio.sleep(0)
        if broken:
            raise LogUnavailable("the broker is away")
        return await log.load(partition, offset)

    view._load = flaky
    results = await asyncio.gather(view.version("wf", 1), view.version("wf", 1), return_exceptions=True)
    assert all(isinstance(r, LogUnavailable) for r in results)
    broken = False
    assert await view.version("wf", 1) == workflow(1)


def test_a_local_apply_after_the_log_was_read_changes_nothing() -> None:
    """Instances A and B both wrote version 2; A's reader folded both records (B's last) before
    A's API applied its own copy: the log's later record stays the version."""
    view = WorkflowView()
    ours, theirs = workflow(2, nodes=1), workflow(2, nodes=3)
    view.apply(workflow(1), (0, 0))
    view.apply(ours, (0, 1))
    view.apply(theirs, (0, 2))
    view.apply(ours)
    assert view.get("wf") is theirs
    assert [(v.version, v.nodes, v.position) for v in view.versions_of("wf")] == [
        (2, 3, (0, 2)),
        (1, 1, (0, 0)),
    ]


def definitions_in(value: object) -> list[WorkflowDefinition]:
    """Every definition ``value`` holds, in dicts, lists and tuples at any depth."""
    if isinstance(value, WorkflowDefinition):
        return [value]
    if isinstance(value, dict):
        return [wf for item in value.values() for wf in definitions_in(item)]
    if isinstance(value, list | tuple):
        return [wf for item in value for wf in definitions_in(item)]
    return []


def test_memory_holds_the_latest_definition_only() -> None:
    view = WorkflowView()
    for version in range(1, 200):
        view.apply(workflow(version, nodes=10), (0, version))
    assert [wf.version for wf in definitions_in(vars(view))] == [199]
    assert len(view.versions_of("wf")) == 199
    assert all(line.created_at - at(0) == timedelta(seconds=line.version) for line in view.versions_of("wf"))


def test_the_same_definition_is_all_but_its_number_and_time() -> None:
    assert same_definition(workflow(1), workflow(1).model_copy(update={"version": 7, "created_at": at(99)}))
    assert not same_definition(workflow(1), workflow(1, nodes=2))
    assert not same_definition(workflow(1), workflow(1).model_copy(update={"name": "renamed"}))
    one = NodeDefinition(id="n0", type="transform", config={"x": 1})
    true = NodeDefinition(id="n0", type="transform", config={"x": True})
    assert not same_definition(
        workflow(1).model_copy(update={"nodes": (one,)}), workflow(1).model_copy(update={"nodes": (true,)})
    ), "1 and true are different configs to a run"
    nan = NodeDefinition(id="n0", type="transform", config={"x": float("nan")})
    null = NodeDefinition(id="n0", type="transform", config={"x": None})
    assert not same_definition(
        workflow(1).model_copy(update={"nodes": (nan,)}), workflow(1).model_copy(update={"nodes": (null,)})
    ), "NaN is not null"
    assert same_definition(
        workflow(1).model_copy(
            update={"nodes": (NodeDefinition(id="n0", type="transform", config={"a": 1, "b": 2}),)}
        ),
        workflow(1).model_copy(
            update={"nodes": (NodeDefinition(id="n0", type="transform", config={"b": 2, "a": 1}),)}
        ),
    ), "an object's keys in another order are the same object"
