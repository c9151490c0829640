"""The topic spec file read without a broker: the replication each environment gives, how the
environment is chosen, and the rule that every retention is stated with its reason and nothing
is kept forever."""

from __future__ import annotations

import re
import tomllib

import pytest

from linkflow_stream.kafka.topics import (
    SPEC_FILE,
    TopicSpecError,
    choose_environment,
    load_environments,
    load_specs,
)

DAY_MS = 86_400_000


def test_environments_state_replication_and_min_isr() -> None:
    environments = load_environments()
    assert (environments["dev"].replication_factor, environments["dev"].min_insync_replicas) == (1, 1)
    assert (environments["cluster"].replication_factor, environments["cluster"].min_insync_replicas) == (3, 2)
    for spec in load_specs(environment="cluster"):
        assert spec.replication_factor == 3
        assert spec.configs()["min.insync.replicas"] == "2"
    assert {s.replication_factor for s in load_specs()} == {1}, "dev unless told otherwise"


@pytest.mark.parametrize(("brokers", "expected"), [(1, "dev"), (2, "dev"), (3, "cluster"), (5, "cluster")])
def test_unnamed_the_environment_is_the_largest_the_brokers_hold(brokers: int, expected: str) -> None:
    assert choose_environment(load_environments(), None, brokers).environment == expected


def test_a_named_environment_wins_over_the_broker_count() -> None:
    assert choose_environment(load_environments(), "cluster", 1).environment == "cluster"
    with pytest.raises(TopicSpecError, match="LINKFLOW_TOPICS_ENV=prod"):
        choose_environment(load_environments(), "prod", 3)
    with pytest.raises(TopicSpecError, match="fits a cluster of 0 brokers"):
        choose_environment(load_environments(), None, 0)


def test_nothing_is_kept_forever_and_the_event_log_outlives_the_read_model() -> None:
    specs = {s.name: s for s in load_specs()}
    for spec in specs.values():
        if spec.cleanup_policy == "delete":
            assert spec.retention_ms is not None and spec.retention_ms > 0, f"{spec.name} is kept forever"
        else:
            assert spec.cleanup_policy == "compact", spec.name  # one record per key, the latest
    # the read model keeps a finished run 30 days (LINKFLOW_RETENTION_DAYS); the log keeps more,
    # so a view rebuilt from offset 0 has what the read model has
    events = specs["linkflow.events"].retention_ms
    assert events is not None and events > 30 * DAY_MS


def test_every_retention_states_its_reason_beside_it() -> None:
    text = SPEC_FILE.read_text()
    topics = tomllib.loads(text)["topic"]
    blocks = text.split("[[topic]]")[1:]
    assert len(blocks) == len(topics)
    for block, topic in zip(blocks, topics, strict=True):
        stated = [
            line
            for line in block.splitlines()
            if re.match(r"(retention_ms|cleanup_policy)\s*=", line)
            and "#" in line
            and line.split("#", 1)[1].strip()
        ]
        assert stated, f"{topic['name']}: its retention (or compaction) has no reason beside it"
