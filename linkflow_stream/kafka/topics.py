"""Topic specs from ``topics/topics.toml`` and their idempotent application to the broker.

A spec carries its environment's replication: ``[environments.<name>]`` in the spec file gives
every topic a replication factor and ``min.insync.replicas``; ``LINKFLOW_TOPICS_ENV`` picks the
environment, or the broker count the cluster reports does (ADR 0017).
"""

from __future__ import annotations

import asyncio
import functools
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from linkflow_stream.core import topic_names
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.settings import Settings

SCHEMA_NAMESPACE = "io.linkflow."
"""A spec's ``value`` in this namespace names a schema of ``schemas/``; any other is prose."""
SPEC_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.toml"
CONFIG_SETTLE_SECONDS = 10.0
DEV = "dev"
"""The environment of a single broker: what ``load_specs`` gives unless told otherwise."""


class TopicSpecError(LinkflowError):
    error_type = "topic_spec"


@dataclass(frozen=True)
class Replication:
    """One ``[environments.<name>]``: how many copies of each partition a topic keeps, and how
    many must have a write before it is acknowledged (every producer here uses ``acks=all``)."""

    environment: str
    replication_factor: int
    min_insync_replicas: int


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str = "delete"
    retention_ms: int | None = None
    co_partitioned: bool = False
    max_message_bytes: int | None = None
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    """Set as the topic's config when given; else the broker's default applies."""
    extra: tuple[tuple[str, str], ...] = ()
    """Further topic configs as the spec file's ``[topic.configs]`` gives them."""
    value_schema: str | None = None
    """The full name of the Avro record the topic's values are (``value`` in the spec file), or
    ``None`` for a topic whose values are not one of ``schemas/`` (the DLQ keeps bytes as they came)."""

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy, **dict(self.extra)}
        if self.max_message_bytes is not None:
            cfg["max.message.bytes"] = str(self.max_message_bytes)
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        if self.min_insync_replicas is not None:
            cfg["min.insync.replicas"] = str(self.min_insync_replicas)
        return cfg


def load_environments(path: Path = SPEC_FILE) -> dict[str, Replication]:
    """Every ``[environments.<name>]`` of the spec file, by name."""
    data = tomllib.loads(path.read_text())
    return {
        name: Replication(name, int(env["replication_factor"]), int(env["min_insync_replicas"]))
        for name, env in data.get("environments", {}).items()
    }


def choose_environment(
    environments: dict[str, Replication], requested: str | None, brokers: int
) -> Replication:
    """The environment named by ``requested`` (``LINKFLOW_TOPICS_ENV``); unnamed, the one with the
    largest replication factor that ``brokers`` brokers can hold."""
    if requested is not None:
        if requested not in environments:
            raise TopicSpecError(
                f"LINKFLOW_TOPICS_ENV={requested}: the spec file has the environments {sorted(environments)}"
            )
        return environments[requested]
    fitting = [env for env in environments.values() if env.replication_factor <= brokers]
    if not fitting:
        raise TopicSpecError(f"no environment in the spec file fits a cluster of {brokers} brokers")
    return max(fitting, key=lambda env: env.replication_factor)


@dataclass(frozen=True)
class PoolSpec:
    """One ``[[pool]]`` of the spec file: a worker pool, its task topics made from ``[task_topics]``."""

    name: str
    slots: int
    """Tasks of this pool one executor process runs at once (``LINKFLOW_EXECUTOR_SLOTS`` overrides)."""


POOL_NAME = re.compile(r"^[a-z0-9-]{1,32}$")
"""What a pool may be called: the same rule as a node's ``pool``."""


@functools.cache
def load_pools(path: Path = SPEC_FILE) -> dict[str, PoolSpec]:
    """Every ``[[pool]]`` of the spec file, by name (read once per process)."""
    data = tomllib.loads(path.read_text())
    pools: dict[str, PoolSpec] = {}
    for p in data.get("pool", []):
        name, slots = str(p["name"]), int(p.get("slots", 1))
        if not POOL_NAME.match(name) or slots < 1 or name in pools:
            raise TopicSpecError(
                f"[[pool]] {name!r}: a pool needs a unique name matching {POOL_NAME.pattern} and slots >= 1"
            )
        pools[name] = PoolSpec(name, slots)
    return pools


def _topic_tables(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``[[topic]]`` tables, plus three per ``[[pool]]`` (one per priority) from ``[task_topics]``."""
    tables: list[dict[str, Any]] = list(data["topic"])
    template = data.get("task_topics")
    for p in data.get("pool", []):
        if template is None:
            raise TopicSpecError(
                "the spec file declares pools but no [task_topics] to make their topics from"
            )
        tables += [{**template, "name": name} for name in topic_names.pool_tasks(str(p["name"]))]
    return tables


def load_specs(path: Path = SPEC_FILE, environment: str = DEV) -> list[TopicSpec]:
    """Parse the spec file; co-partitioned topics take the shared execution partition count, and
    every topic takes ``environment``'s replication. Each ``[[pool]]`` adds its three task topics."""
    data = tomllib.loads(path.read_text())
    shared = int(data["execution_partitions"])
    large = int(data.get("max_message_bytes", 1048576))
    replication = choose_environment(load_environments(path), environment, brokers=0)
    specs = []
    for t in _topic_tables(data):
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
                replication_factor=replication.replication_factor,
                min_insync_replicas=replication.min_insync_replicas,
                extra=tuple(sorted((str(k), str(v)) for k, v in t.get("configs", {}).items())),
                value_schema=t["value"] if str(t.get("value", "")).startswith(SCHEMA_NAMESPACE) else None,
            )
        )
    return specs


def value_schemas(settings: Settings, pools: Iterable[str] = (), path: Path = SPEC_FILE) -> dict[str, str]:
    """Every topic whose values are a schema of ``schemas/``, by real (prefixed) name, with that
    schema's full name: what is registered with a schema registry. ``pools`` adds task pools'
    topics (``linkflow.tasks.<pool>.<priority>``) beyond the spec file's with the default pool's schema."""
    specs = {s.name: s.value_schema for s in load_specs(path) if s.value_schema is not None}
    task_schema = specs.get(topic_names.tasks("default"))
    if task_schema is not None:
        specs.update({name: task_schema for pool in pools for name in topic_names.pool_tasks(pool)})
    return {settings.topic(name): schema for name, schema in sorted(specs.items())}


@functools.cache
def max_message_bytes(path: Path = SPEC_FILE) -> int:
    """The record size producers and fetches must allow: the largest any topic takes (read once
    per process: every consumer and producer asks)."""
    data = tomllib.loads(path.read_text())
    sizes = [int(data.get("max_message_bytes", 1048576))]
    sizes += [int(t["max_message_bytes"]) for t in data["topic"] if "max_message_bytes" in t]
    return max(sizes)


def execution_partitions(path: Path = SPEC_FILE) -> int:
    return int(tomllib.loads(path.read_text())["execution_partitions"])


@dataclass(frozen=True)
class _Layout:
    """What the broker says of an existing topic."""

    partitions: int
    replication_factor: int


async def _layouts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, _Layout]:
    described = await admin.describe_topics(names)
    return {
        t["topic"]: _Layout(
            len(t["partitions"]), max((len(p["replicas"]) for p in t["partitions"]), default=0)
        )
        for t in described
        if t.get("error_code", 0) == 0
    }


async def topic_environment(settings: Settings) -> Replication:
    """The environment ``apply_topics`` uses: ``LINKFLOW_TOPICS_ENV``, else derived from the
    brokers the cluster lists now."""
    environments = load_environments()
    if settings.topics_env is not None:
        return choose_environment(environments, settings.topics_env, brokers=0)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()
    return choose_environment(environments, None, brokers)


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


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's config. Asked again for a while when a broker answers with an error for a
    topic: in a cluster, a node that has not caught up with a topic's creation yet does not know
    it (each request may go to any node)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    deadline = asyncio.get_running_loop().time() + CONFIG_SETTLE_SECONDS
    while True:
        current: dict[str, dict[str, str]] = {}
        unknown = False
        for response in await admin.describe_configs(resources):
            for resource in response.resources:
                error_code, name, entries = resource[0], resource[3], resource[4]
                unknown = unknown or error_code != 0
                current[name] = {entry[0]: entry[1] for entry in entries}
        if not unknown or asyncio.get_running_loop().time() > deadline:
            return current
        await asyncio.sleep(0.1)


async def _drifted(admin: AIOKafkaAdminClient, settings: Settings, specs: list[TopicSpec]) -> list[TopicSpec]:
    """The specs whose topic's config differs from the spec."""
    current = await _configs(admin, [settings.topic(s.name) for s in specs])
    return [
        s
        for s in specs
        if any(current.get(settings.topic(s.name), {}).get(k) != v for k, v in s.configs().items())
    ]


async def apply_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics, then verify every partition count and replication factor and
    converge the configs; returns what changed. Without ``specs``, every topic of the spec file
    in the environment ``topic_environment`` gives.

    Safe to run again. A topic whose partition count differs from its spec is an error:
    repartitioning a keyed topic moves executions between owners, so it is never done silently.
    Nor is a replication factor changed (that moves replicas between brokers).
    """
    if specs is None:
        specs = load_specs(environment=(await topic_environment(settings)).environment)
    names = [settings.topic(s.name) for s in specs]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    changes: list[str] = []
    refused: list[str] = []
    created: list[TopicSpec] = []
    try:
        current = await _layouts(admin, names)
        missing = [s for s in specs if settings.topic(s.name) not in current]
        for spec in missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=settings.topic(spec.name),
                        num_partitions=spec.partitions,
                        replication_factor=spec.replication_factor,
                        topic_configs=spec.configs(),
                    )
                ]
            )
            for error in response.to_object()["topic_errors"]:
                if error["error_code"] == 0:
                    created.append(spec)
                    changes.append(
                        f"created {settings.topic(spec.name)} ({spec.partitions} partitions, "
                        f"replication factor {spec.replication_factor})"
                    )
                elif error["error_code"] != TopicAlreadyExistsError.errno:
                    # The answer says why (say, a replication factor the brokers cannot hold).
                    refused.append(f"{error['topic']} was not created: {error['error_message']}")
        if refused:
            raise TopicSpecError("; ".join(refused))
        for _ in range(50):  # metadata of new topics reaches describe_topics after a short while
            current = await _layouts(admin, names)
            if len(current) == len(names):
                break
            await asyncio.sleep(0.1)
        # Not the topics created just now: they have the spec's configs, and a broker that has
        # not caught up with their creation yet would report them as drifted (an alter then is
        # harmless, but says "updated" for nothing). One created meanwhile by someone else
        # (TopicAlreadyExists: another engine, or a broker that auto-created it) may have any.
        changes += await _converge_configs(
            admin, settings, [s for s in specs if settings.topic(s.name) in current and s not in created]
        )
    finally:
        await admin.close()
    problems = [f"{name} does not exist after apply" for name in names if name not in current]
    for s in specs:
        layout = current.get(settings.topic(s.name))
        if layout is not None and layout.partitions != s.partitions:
            problems.append(
                f"{settings.topic(s.name)} has {layout.partitions} partitions, spec says {s.partitions}"
            )
        if layout is not None and layout.replication_factor != s.replication_factor:
            problems.append(
                f"{settings.topic(s.name)} has replication factor {layout.replication_factor}, spec says "
                f"{s.replication_factor} (apply never moves replicas: reassign them, or choose the "
                "environment with LINKFLOW_TOPICS_ENV)"
            )
    if problems:
        raise TopicSpecError("; ".join(problems))
    return changes
