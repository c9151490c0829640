"""Topic specs applied to the real broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.kafka import topics as topics_module
from linkflow_stream.kafka.topics import (
    TopicSpec,
    TopicSpecError,
    apply_topics,
    load_specs,
    topic_environment,
)
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.integration


def fresh(kafka: str) -> Settings:
    return Settings(bootstrap_servers=kafka, topic_prefix=f"i{uuid.uuid4().hex[:8]}.")


async def describe(kafka: str, names: list[str]) -> dict[str, tuple[int, None]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
        return {t["topic"]: (len(t["partitions"]), None) for t in topics if t["error_code"] == 0}
    finally:
        await admin.close()


def test_specs_co_partition_every_execution_keyed_topic() -> None:
    specs = {s.name: s for s in load_specs()}
    keyed = [s for s in specs.values() if s.co_partitioned]
    assert {s.name for s in keyed} >= {
        "linkflow.events",
        "linkflow.commands",
        "linkflow.results",
        "linkflow.requests.high",
        "linkflow.state.executions",
    }
    assert len({s.partitions for s in keyed}) == 1
    assert specs["linkflow.workflows"].cleanup_policy == "compact"
    assert specs["linkflow.state.executions"].cleanup_policy == "compact"
    state = specs["linkflow.state.executions"].configs()
    assert state["segment.ms"] == "60000", "the changelog compacts within minutes, so claims read little"
    assert int(state["delete.retention.ms"]) <= 3_600_000


async def test_apply_is_idempotent(kafka: str) -> None:
    settings = fresh(kafka)
    first = await apply_topics(settings)
    assert len(first) == len(load_specs())
    assert await apply_topics(settings) == [], "a second apply changes nothing"
    names = [settings.topic(s.name) for s in load_specs()]
    found = await describe(kafka, names)
    assert set(found) == set(names)
    for spec in load_specs():
        assert found[settings.topic(spec.name)][0] == spec.partitions


async def test_apply_refuses_a_partition_mismatch(kafka: str) -> None:
    settings = fresh(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic("linkflow.events"), 2, 1)])
    finally:
        await admin.close()
    with pytest.raises(TopicSpecError, match=r"linkflow\.events has 2 partitions, spec says"):
        await apply_topics(settings, [TopicSpec("linkflow.events", 4, co_partitioned=True)])


async def test_apply_brings_an_existing_topics_config_back_to_its_spec(kafka: str) -> None:
    settings = fresh(kafka)
    events = next(s for s in load_specs() if s.name == "linkflow.events")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:  # as an older spec made it: the default 1 MB record limit
        await admin.create_topics([NewTopic(settings.topic("linkflow.events"), events.partitions, 1)])
    finally:
        await admin.close()
    changes = await apply_topics(settings, [events])
    assert changes == [f"updated the config of {settings.topic('linkflow.events')} to {events.configs()}"]
    assert await apply_topics(settings, [events]) == [], "converged: a second apply changes nothing"


async def test_one_broker_gets_the_dev_environment_and_a_pinned_cluster_one_is_refused(kafka: str) -> None:
    settings = fresh(kafka)
    assert (await topic_environment(settings)).environment == "dev", "derived from a single broker"
    created = await apply_topics(settings)
    assert created and all("replication factor 1" in line for line in created), created

    pinned = Settings(bootstrap_servers=kafka, topic_prefix=fresh(kafka).topic_prefix, topics_env="cluster")
    with pytest.raises(TopicSpecError, match=r"was not created: .*replication factor of 3 cannot be reached"):
        await apply_topics(pinned)


async def test_apply_refuses_a_replication_factor_mismatch(kafka: str) -> None:
    settings = fresh(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:  # as the dev environment made it
        await admin.create_topics([NewTopic(settings.topic("linkflow.events"), 4, 1)])
    finally:
        await admin.close()
    spec = TopicSpec("linkflow.events", 4, co_partitioned=True, replication_factor=3, min_insync_replicas=2)
    with pytest.raises(TopicSpecError, match=r"linkflow\.events has replication factor 1, spec says 3"):
        await apply_topics(settings, [spec])


async def test_a_topic_another_creator_made_between_lookup_and_create_is_brought_to_its_spec(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines starting at once, or a broker that auto-created the topic: it is missing when
    looked up and already there when created (TopicAlreadyExists). Its configs are that creator's,
    so they are converged like an existing topic's; they were left as they were."""
    settings = fresh(kafka)
    events = next(s for s in load_specs() if s.name == "linkflow.events")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:  # the other creator: no configs of the spec
        await admin.create_topics([NewTopic(settings.topic("linkflow.events"), events.partitions, 1)])
    finally:
        await admin.close()
    real_layouts = topics_module._layouts
    lookups = 0

    async def first_lookup_misses_it(admin: AIOKafkaAdminClient, names: list[str]) -> Any:
        nonlocal lookups
        lookups += 1
        return {} if lookups == 1 else await real_layouts(admin, names)

    monkeypatch.setattr(topics_module, "_layouts", first_lookup_misses_it)
    changes = await apply_topics(settings, [events])
    assert lookups > 1
    assert changes == [f"updated the config of {settings.topic('linkflow.events')} to {events.configs()}"]
    monkeypatch.undo()
    assert await apply_topics(settings, [events]) == [], "converged: a second apply changes nothing"
