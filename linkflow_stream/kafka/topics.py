"""Topic specs from ``topics/topics.toml`` and their idempotent application to the broker."""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.settings import Settings

SPEC_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.toml"
CONFIG_SETTLE_SECONDS = 10.0


class TopicSpecError(LinkflowError):
    error_type = "topic_spec"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str = "delete"
    retention_ms: int | None = None
    co_partitioned: bool = False
    max_message_bytes: int | None = None

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy}
        if self.max_message_bytes is not None:
            cfg["max.message.bytes"] = str(self.max_message_bytes)
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


def load_specs(path: Path = SPEC_FILE) -> list[TopicSpec]:
    """Parse the spec file; co-partitioned topics take the shared execution partition count."""
    data = tomllib.loads(path.read_text())
    shared = int(data["execution_partitions"])
    large = int(data.get("max_message_bytes", 1048576))
    specs = []
    for t in data["topic"]:
        co = bool(t.get("co_partitioned", False))
        if co and "partitions" in t:
            raise TopicSpecError(f"{t['name']}: a co-partitioned topic takes execution_partitions")
        specs.append(
            TopicSpec(
                name=t["name"],
                partitions=shared if co else int(t.get("partitions", 1)),
                cleanup_policy=t.get("cleanup_policy", "delete"),
                retention_ms=t.get("retention_ms"),
                co_partitioned=co,
                max_message_bytes=large if t.get("large_records") else t.get("max_message_bytes"),
            )
        )
    return specs


def max_message_bytes(path: Path = SPEC_FILE) -> int:
    """The record size producers and fetches must allow: the largest any topic takes."""
    data = tomllib.loads(path.read_text())
    sizes = [int(data.get("max_message_bytes", 1048576))]
    sizes += [int(t["max_message_bytes"]) for t in data["topic"] if "max_message_bytes" in t]
    return max(sizes)


def execution_partitions(path: Path = SPEC_FILE) -> int:
    return int(tomllib.loads(path.read_text())["execution_partitions"])


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}


async def _converge_configs(
    admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec]
) -> list[str]:
    """Set each topic's configs to its spec where they differ (e.g. a topic made by an older spec).

    AlterConfigs replaces a topic's whole dynamic config with the given set, so the spec becomes
    the topic's config, which is what a declarative spec means."""
    if not specs:
        return []
    drift = await _drifted(admin, settings, specs)
    if drift:
        await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, settings.topic(s.name), configs=s.configs())
                for s in drift
            ]
        )
        # The broker applies a config change asynchronously: wait until it reads back, so an
        # engine started next (or a second apply) sees the spec.
        deadline = asyncio.get_running_loop().time() + CONFIG_SETTLE_SECONDS
        while await _drifted(admin, settings, drift):
            if asyncio.get_running_loop().time() > deadline:
                raise TopicSpecError(f"topic configs did not settle within {CONFIG_SETTLE_SECONDS}s")
            await asyncio.sleep(0.05)
    return [f"updated the config of {settings.topic(s.name)} to {s.configs()}" for s in drift]


async def _drifted(admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec]) -> list[TopicSpec]:
    """The specs whose topic's config differs from the spec."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, settings.topic(s.name)) for s in specs]
    current: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            current[name] = {entry[0]: entry[1] for entry in entries}
    return [
        s
        for s in specs
        if any(current.get(settings.topic(s.name), {}).get(k) != v for k, v in s.configs().items())
    ]


async def apply_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics, then verify every partition count; returns what changed.

    Safe to run again. A topic whose partition count differs from its spec is an error:
    repartitioning a keyed topic moves executions between owners, so it is never done silently.
    """
    specs = specs if specs is not None else load_specs()
    names = [settings.topic(s.name) for s in specs]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    changes: list[str] = []
    try:
        current = await _partition_counts(admin, names)
        missing = [s for s in specs if settings.topic(s.name) not in current]
        for spec in missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            name=settings.topic(spec.name),
                            num_partitions=spec.partitions,
                            replication_factor=1,
                            topic_configs=spec.configs(),
                        )
                    ]
                )
                changes.append(f"created {settings.topic(spec.name)} ({spec.partitions} partitions)")
            except TopicAlreadyExistsError:
                pass  # created meanwhile, by another process or before metadata caught up: verified below
        for _ in range(50):  # metadata of new topics reaches describe_topics after a short while
            current = await _partition_counts(admin, names)
            if len(current) == len(names):
                break
            await asyncio.sleep(0.1)
        changes += await _converge_configs(
            admin, settings, [s for s in specs if settings.topic(s.name) in current]
        )
    finally:
        await admin.close()
    problems = [f"{name} does not exist after apply" for name in names if name not in current]
    problems += [
        f"{settings.topic(s.name)} has {current[settings.topic(s.name)]} partitions, spec says {s.partitions}"
        for s in specs
        if current.get(settings.topic(s.name), s.partitions) != s.partitions
    ]
    if problems:
        raise TopicSpecError("; ".join(problems))
    return changes
