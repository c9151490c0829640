"""The cost model (a pure function of an execution's state) and the report, summed by the read
model's store (a real SQLite file)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from projections.costs import Rates, cost_of, report, since_of
from projections.read_model import execution_row, network_rows
from projections.store import Changes, open_store

T0 = from_millis(1_800_000_000_000)
RATES = Rates(
    per_attempt=1.0, per_event=0.1, per_compute_second=10.0, per_cpu_second=100.0, per_gb_transferred=1e9
)  # round numbers: 1 "dollar" per byte


def run(
    execution_id: str,
    workflow: str = "wf",
    *,
    attempts: int = 1,
    duration_us: int = 0,
    cpu_us: int = 0,
    network: int = 0,
    days_ago: float = 0,
    status: ExecutionStatus = ExecutionStatus.SUCCESS,
) -> ExecutionState:
    wf = WorkflowDefinition(
        id=workflow,
        created_at=T0,
        nodes=(NodeDefinition(id="n", type="code"), NodeDefinition(id="w", type="wait")),
    )
    usage = {
        "duration_us": duration_us,
        "cpu_us": cpu_us,
        "request_bytes": network // 2,
        "response_bytes": network - network // 2,
    }
    return ExecutionState(
        id=execution_id,
        workflow=wf,
        status=status,
        priority=Priority.NORMAL,
        input={},
        created_at=T0 - timedelta(days=days_ago),
        seq=10,
        nodes={
            "n": NodeState(status=NodeStatus.SUCCESS, attempts=attempts, usage=usage),
            "w": NodeState(status=NodeStatus.SUCCESS, attempts=1),
        },
    )


def test_cost_adds_attempts_events_compute_cpu_and_network() -> None:
    cost = cost_of(run("e", attempts=2, duration_us=500_000, cpu_us=250_000, network=7), RATES)
    assert cost["breakdown"] == {"attempts": 3.0, "events": 1.0, "compute": 5.0, "cpu": 25.0, "network": 7.0}
    assert cost["total_cost"] == pytest.approx(41.0)
    assert cost["nodes"]["w"]["cost"] == 1.0, "a wait costs its attempt only: it holds no worker"
    assert (cost["compute_seconds"], cost["network_bytes"], cost["storage_events"]) == (0.5, 7, 10)


async def stored_report(
    tmp_path: Path, states: list[ExecutionState], period: str, group_by: str = "workflow"
) -> dict[str, Any]:
    """Store the runs as the read model does, then report from the database's sums."""
    store = open_store(None, tmp_path)
    await store.open("test")
    try:
        changes = Changes()
        for state in states:
            changes.executions[state.id] = execution_row(state, default_codec(), RATES)
            changes.node_network += network_rows(state)
        await store.write(changes)
        since = since_of(period, T0)
        column = "workflow_id" if group_by == "workflow" else "team"
        groups = await store.cost_groups(column, None if since is None else int(since.timestamp() * 1000))
        return report(groups, period, since, group_by)
    finally:
        await store.close()


async def test_report_groups_by_workflow_within_the_period_and_suggests(tmp_path: Path) -> None:
    states = [
        run("a1", "api-heavy", network=1000),
        run("a2", "api-heavy", network=3000),
        run("r1", "flaky", attempts=3, status=ExecutionStatus.FAILED),
        run("old", "flaky", attempts=3, days_ago=40),
    ]
    month = await stored_report(tmp_path, states, "month")
    assert month["executions"] == 3, "the 40-day-old run is outside the month"
    by_id = {w["workflow_id"]: w for w in month["workflows"]}
    assert by_id["api-heavy"]["executions"] == 2
    assert by_id["api-heavy"]["average_cost"] == pytest.approx(by_id["api-heavy"]["total_cost"] / 2)
    assert month["workflows"][0]["workflow_id"] == "api-heavy", "most expensive first"
    assert any("node n moves ~2000 bytes per run" in s for s in by_id["api-heavy"]["suggestions"])
    assert any("were retries" in s for s in by_id["flaky"]["suggestions"])
    assert any("runs failed" in s for s in by_id["flaky"]["suggestions"])
    assert (await stored_report(tmp_path, states, "all"))["executions"] == 4


async def test_report_by_team_puts_workflows_without_a_team_together(tmp_path: Path) -> None:
    a = run("a", "wf-a")
    b = run("b", "wf-b")
    c = run("c", "wf-c")
    a = a.model_copy(update={"workflow": a.workflow.model_copy(update={"team": "payments"})})
    b = b.model_copy(update={"workflow": b.workflow.model_copy(update={"team": "payments"})})
    teams = await stored_report(tmp_path, [a, b, c], "all", group_by="team")
    by_team = {t["team"]: t for t in teams["teams"]}
    assert by_team["payments"]["executions"] == 2 and by_team["(no team)"]["executions"] == 1
    assert teams["group_by"] == "team" and teams["executions"] == 3
