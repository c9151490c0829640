"""Topic specs from ``topics/topics.toml`` and their idempotent application to the broker."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from linkflow_stream.errors import LinkflowError
from linkflow_stream.settings import Settings

SPEC_FILE = Path(__file__).resolve().parent.parent / "topics" / "topics.toml"


class TopicSpecError(LinkflowError):
    error_type = "topic_spec"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str = "delete"
    retention_ms: int | None = None
    co_partitioned: bool = False

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


def load_specs(path: Path = SPEC_FILE) -> list[TopicSpec]:
    """Parse the spec file; co-partitioned topics take the shared execution partition count."""
    data = tomllib.loads(path.read_text())
    shared = int(data["execution_partitions"])
    specs = []
    for t in data["topic"]:
        co = bool(t.get("co_partitioned", False))
        if co and "partitions" in t:
            raise TopicSpecError(f"{t['name']}: a co-partitioned topic takes execution_partitions")
        specs.append(TopicSpec(name=t["name"], partitions=shared if co else int(t.get("partitions", 1)),
                               cleanup_policy=t.get("cleanup_policy", "delete"),
                               retention_ms=t.get("retention_ms"), co_partitioned=co))
    return specs


def execution_partitions(path: Path = SPEC_FILE) -> int:
    return int(tomllib.loads(path.read_text())["execution_partitions"])


async def apply_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics; returns what changed. Safe to run again; refuses a partition mismatch."""
    specs = specs if specs is not None else load_specs()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    changes: list[str] = []
    try:
        existing = await admin.describe_topics([settings.topic(s.name) for s in specs])
        current = {t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0}
        missing = [s for s in specs if settings.topic(s.name) not in current]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(name=settings.topic(s.name), num_partitions=s.partitions, replication_factor=1,
                             topic_configs=s.configs()) for s in missing])
            except TopicAlreadyExistsError:
                pass  # another process applied them first
            changes += [f"created {settings.topic(s.name)} ({s.partitions} partitions)" for s in missing]
        wrong = [f"{settings.topic(s.name)} has {current[settings.topic(s.name)]} partitions, spec says {s.partitions}"
                 for s in specs if current.get(settings.topic(s.name), s.partitions) != s.partitions]
        if wrong:
            # Repartitioning a keyed topic moves executions between owners: never do it silently.
            raise TopicSpecError("; ".join(wrong))
    finally:
        await admin.close()
    return changes
