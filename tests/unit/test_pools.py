"""Worker pools' pure parts (ADR 0028): the declared pools and their topics, the roles and pools a
process may run, the weights setting, the registry's health and the desired-workers formula."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from linkflow_stream.cli import main
from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.engine import placement_problem
from linkflow_stream.kafka.topics import TopicSpecError, load_pools, load_specs
from linkflow_stream.runtime.pool_metrics import desired_workers, pool_slots
from linkflow_stream.settings import Settings
from projections.workers import WorkerRecord, WorkerState, WorkerView

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_the_shipped_pools_are_default_and_gpu() -> None:
    pools = load_pools()
    assert sorted(pools) == ["default", "gpu"]
    assert pools["default"].slots == 64 and pools["gpu"].slots == 2


def test_every_pool_gets_a_task_topic_per_priority_from_the_template() -> None:
    specs = {s.name: s for s in load_specs()}
    for pool in ("default", "gpu"):
        for priority in Priority:
            spec = specs[f"linkflow.tasks.{pool}.{priority.value}"]
            assert spec.co_partitioned and spec.value_schema == "io.linkflow.NodeTask"
            assert spec.retention_ms == 604800000 and spec.partitions == specs["linkflow.events"].partitions
    assert not [name for name in specs if name.startswith("linkflow.tasks.") and name.count(".") != 3]
    assert topic_names.pool_tasks("gpu") == (
        "linkflow.tasks.gpu.high",
        "linkflow.tasks.gpu.normal",
        "linkflow.tasks.gpu.low",
    )
    assert topic_names.tasks("default") == "linkflow.tasks.default.normal"


def test_a_bad_pool_declaration_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "topics.toml"
    spec.write_text(
        'execution_partitions = 1\n[[topic]]\nname = "x"\n[[pool]]\nname = "GPU pool"\nslots = 2\n'
    )
    with pytest.raises(TopicSpecError, match="a pool needs a unique name"):
        load_pools(spec)
    spec.write_text(
        "execution_partitions = 1\n[environments.dev]\nreplication_factor = 1\nmin_insync_replicas = 1\n"
        '[[topic]]\nname = "x"\n[[pool]]\nname = "gpu"\n'
    )
    with pytest.raises(TopicSpecError, match="no \\[task_topics\\]"):
        load_specs(spec)


@pytest.mark.parametrize(
    ("roles", "pools", "problem"),
    [
        ("api,orchestrator,executor,views", "default,gpu", None),
        ("executor", "gpu", None),
        ("orchestrator", "default", None),
        ("api,bogus", "default", "--roles: bogus: the roles are api, orchestrator, executor, views"),
        ("", "default", "--roles: none given"),
        ("api,orchestrator", "default", "--roles: the api role answers from the views"),
        ("executor", "default,tpu", "--pools: tpu: topics/topics.toml declares the pools default, gpu"),
        ("executor", "", "--pools: none given"),
    ],
)
def test_roles_and_pools_a_process_may_run(roles: str, pools: str, problem: str | None) -> None:
    found = placement_problem(Settings(roles=roles, executor_pools=pools))
    assert found == problem if problem is None else (found is not None and found.startswith(problem)), found


def test_roles_and_pools_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKFLOW_ROLES", "executor, views")
    monkeypatch.setenv("LINKFLOW_EXECUTOR_POOLS", "gpu,default,gpu")
    s = Settings()
    assert s.roles == ("executor", "views") and s.executor_pools == ("gpu", "default")
    monkeypatch.setenv("LINKFLOW_EXECUTOR_POOLS", '["gpu"]')
    assert Settings().executor_pools == ("gpu",)
    assert Settings(_env_file=None).roles == ("executor", "views")


def test_priority_weights_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().priority_weights == (8, 3, 1)
    monkeypatch.setenv("LINKFLOW_PRIORITY_WEIGHTS", "5, 2,1")
    assert Settings().priority_weights == (5, 2, 1)
    for bad in ("8,3", "8,3,0", "a,b,c", "8,3,1,1"):
        monkeypatch.setenv("LINKFLOW_PRIORITY_WEIGHTS", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_slots_are_the_pools_unless_the_setting_says() -> None:
    assert pool_slots(Settings(), "gpu") == 2 and pool_slots(Settings(), "default") == 64
    assert pool_slots(Settings(executor_slots=5), "gpu") == 5


@pytest.mark.parametrize(
    ("backlog", "in_use", "slots", "seconds", "expected"),
    [
        (0, 0, 2, None, 0),  # idle: none
        (1, 0, 64, 0.01, 1),  # anything waiting: at least one
        (13, 0, 2, None, 7),  # no duration known yet: one per slots' worth of tasks
        (100, 0, 10, 3.0, 1),  # 100 tasks of 3 s on 10 slots: 30 s, one worker drains it in T=30
        (100, 0, 10, 6.0, 2),
        (1000, 20, 10, 6.0, 21),  # 1020 * 6 / (10 * 30) = 20.4
        (0, 20, 2, 0.001, 10),  # never fewer than what runs now occupies
    ],
)
def test_desired_workers(backlog: int, in_use: int, slots: int, seconds: float | None, expected: int) -> None:
    assert desired_workers(backlog, in_use, slots, seconds, drain_seconds=30.0) == expected


def worker(worker_id: str, heartbeat_at: datetime, **kw: object) -> WorkerRecord:
    return WorkerRecord.model_validate(
        {"id": worker_id, "capacity": 2, "registered_at": T0, "heartbeat_at": heartbeat_at, **kw}
    )


def test_a_worker_is_down_after_three_of_its_own_heartbeats() -> None:
    view = WorkerView()
    view.apply(
        worker(
            "fast",
            T0,
            heartbeat_seconds=0.5,
            roles=("executor",),
            pool_slots={"gpu": 2},
            pool_running={"gpu": 1},
        )
    )
    view.apply(worker("slow", T0))  # the default 5 s
    at = {r["id"]: r for r in view.status(T0 + timedelta(seconds=1.4))["workers"]}
    assert at["fast"]["health"] == "up" and at["slow"]["health"] == "up"
    assert at["fast"]["roles"] == ["executor"] and at["fast"]["pools"] == {
        "gpu": {"slots": 2, "slots_in_use": 1}
    }
    later = {r["id"]: r for r in view.status(T0 + timedelta(seconds=1.6))["workers"]}
    assert later["fast"]["health"] == "down" and later["fast"]["alive"] is False
    assert later["slow"]["health"] == "up"
    assert {r["id"]: r["health"] for r in view.status(T0 + timedelta(seconds=15.1))["workers"]}[
        "slow"
    ] == "down"


def test_pool_capacity_counts_alive_workers_only() -> None:
    view = WorkerView()
    kw = {"heartbeat_seconds": 1.0}
    view.apply(
        worker(
            "a",
            T0,
            pool_slots={"gpu": 2, "default": 8},
            pool_running={"gpu": 2},
            pool_task_seconds={"gpu": 4.0},
            **kw,
        )
    )
    view.apply(
        worker("b", T0, pool_slots={"gpu": 2}, pool_running={"gpu": 1}, pool_task_seconds={"gpu": 2.0}, **kw)
    )
    view.apply(
        worker("dead", T0 - timedelta(seconds=10), pool_slots={"gpu": 2}, pool_running={"gpu": 2}, **kw)
    )
    view.apply(worker("gone", T0, pool_slots={"gpu": 2}, state=WorkerState.DEREGISTERED, **kw))
    pools = view.pool_capacity(T0 + timedelta(seconds=1))
    assert (pools["gpu"].workers, pools["gpu"].slots, pools["gpu"].in_use) == (2, 4, 3)
    assert sorted(pools["gpu"].task_seconds) == [2.0, 4.0]
    assert (pools["default"].workers, pools["default"].in_use, pools["default"].task_seconds) == (1, 0, [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--roles", "api,bogus"], "--roles: bogus: the roles are api, orchestrator, executor, views"),
        (["--pools", "default,tpu"], "--pools: tpu: topics/topics.toml declares the pools default, gpu"),
        (["--roles", "api"], "--roles: the api role answers from the views"),
    ],
)
def test_linkflow_run_refuses_bad_roles_and_pools_with_exit_2(args: list[str], message: str) -> None:
    done = CliRunner().invoke(main, ["run", *args])
    assert done.exit_code == 2, done.output
    assert message in done.output
