"""The topic spec file read without a broker: the replication each environment gives, and how the
environment is chosen."""

from __future__ import annotations

import pytest

from linkflow_stream.kafka.topics import (
    TopicSpecError,
    choose_environment,
    load_environments,
    load_specs,
)


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
