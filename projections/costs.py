"""Execution costs: a price model over what each run used, and reports per workflow.

``cost_of`` is a pure function of an execution's state; the read model stores its totals with
each run, and a report is the database's sums of them. The model charges what the engine really spends:
- every node attempt and every stored event (the log is the database);
- executor run time (``duration_us``);
- CPU seconds of code nodes;
- bytes sent and received by HTTP nodes.
Wait nodes are timers and hold no worker, so waiting is free. The rates are list prices in USD,
set in one place so billing can replace them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from linkflow_stream.core.clock import iso
from linkflow_stream.core.state import ExecutionState
from projections.store.rows import CostGroup


@dataclass(frozen=True)
class Rates:
    per_attempt: float = 0.000025
    """Each node attempt (like a state transition in other engines)."""
    per_event: float = 0.000001
    """Each event stored on the log."""
    per_compute_second: float = 0.0000167
    """Executor wall time of task nodes."""
    per_cpu_second: float = 0.00005
    """CPU time of code nodes, on top of their compute time."""
    per_gb_transferred: float = 0.09
    """Bytes an HTTP node sent and received."""


RATES = Rates()
PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30), "all": None}


def cost_of(state: ExecutionState, rates: Rates = RATES) -> dict[str, Any]:
    """What one execution used and cost, in total and per node."""
    nodes: dict[str, dict[str, Any]] = {}
    totals = {"attempts": 0, "compute_seconds": 0.0, "cpu_seconds": 0.0, "network_bytes": 0, "max_rss_kb": 0}
    for node_id, n in state.nodes.items():
        usage = n.usage or {}
        compute = usage.get("duration_us", 0) / 1e6
        cpu = usage.get("cpu_us", 0) / 1e6
        network = usage.get("request_bytes", 0) + usage.get("response_bytes", 0)
        cost = (
            n.attempts * rates.per_attempt
            + compute * rates.per_compute_second
            + cpu * rates.per_cpu_second
            + network / 1e9 * rates.per_gb_transferred
        )
        nodes[node_id] = {
            "type": state.workflow.node(node_id).type,
            "attempts": n.attempts,
            "compute_seconds": round(compute, 6),
            "cpu_seconds": round(cpu, 6),
            "network_bytes": network,
            "cost": round(cost, 9),
        }
        totals["attempts"] += n.attempts
        totals["compute_seconds"] += compute
        totals["cpu_seconds"] += cpu
        totals["network_bytes"] += network
        totals["max_rss_kb"] = max(totals["max_rss_kb"], usage.get("max_rss_kb", 0))
    breakdown = {
        "attempts": totals["attempts"] * rates.per_attempt,
        "events": state.seq * rates.per_event,
        "compute": totals["compute_seconds"] * rates.per_compute_second,
        "cpu": totals["cpu_seconds"] * rates.per_cpu_second,
        "network": totals["network_bytes"] / 1e9 * rates.per_gb_transferred,
    }
    return {
        "id": state.id,
        "workflow_id": state.workflow.id,
        "status": state.status.value,
        "currency": "USD",
        "compute_seconds": round(totals["compute_seconds"], 6),
        "cpu_seconds": round(totals["cpu_seconds"], 6),
        "memory_peak_kb": totals["max_rss_kb"],
        "network_bytes": totals["network_bytes"],
        "storage_events": state.seq,
        "attempts": totals["attempts"],
        "breakdown": {k: round(v, 9) for k, v in breakdown.items()},
        "total_cost": round(sum(breakdown.values()), 9),
        "nodes": nodes,
    }


GROUPS = ("workflow", "team")


def since_of(period: str, now: datetime) -> datetime | None:
    """Where a report's period starts (``None``: all time)."""
    window = PERIODS[period]
    return now - window if window is not None else None


def report(
    groups: list[CostGroup], period: str, since: datetime | None, group_by: str = "workflow"
) -> dict[str, Any]:
    """Costs per workflow (or per team) for executions created since ``since``, with suggestions.
    The sums come from the read-model store (``ReadStore.cost_groups``)."""
    label = "workflow_id" if group_by == "workflow" else "team"
    out: list[dict[str, Any]] = []
    for group in sorted(groups, key=lambda g: (-g.total_cost, g.key)):
        row = {
            "executions": group.executions,
            "total_cost": group.total_cost,
            "attempts": group.attempts,
            "retries": group.retries,
            "failed": group.failed,
            "breakdown": group.breakdown,
            "top_network_node": group.top_network_node,
        }
        out.append(
            {
                label: group.key if group_by == "workflow" or group.key else "(no team)",
                "executions": group.executions,
                "total_cost": round(group.total_cost, 9),
                "average_cost": round(group.total_cost / max(1, group.executions), 9),
                "breakdown": {k: round(v, 9) for k, v in group.breakdown.items()},
                "suggestions": suggestions(row),
            }
        )
    return {
        "period": period,
        "since": iso(since) if since else None,
        "group_by": group_by,
        "currency": "USD",
        "total_cost": round(sum(g["total_cost"] for g in out), 9),
        "executions": sum(g["executions"] for g in out),
        "workflows" if group_by == "workflow" else "teams": out,
    }


def suggestions(row: dict[str, Any]) -> list[str]:
    """Rules of thumb from what a workflow's runs spent."""
    out = []
    total = row["total_cost"] or 1e-12
    if row["attempts"] and row["retries"] / row["attempts"] > 0.2:
        out.append(
            f"{row['retries']} of {row['attempts']} node attempts were retries: fix the failing "
            "dependency or lower max_attempts; every retry is billed"
        )
    if row["breakdown"].get("network", 0) / total > 0.5 and row["top_network_node"]:
        node_id, size = row["top_network_node"]
        per_run = size // max(1, row["executions"])
        out.append(
            f"network is most of the cost: node {node_id} moves ~{per_run} bytes per run; ask the API "
            "for less (query parameters, pagination) or cache it"
        )
    if row["breakdown"].get("cpu", 0) / total > 0.5:
        out.append(
            "code nodes' CPU is most of the cost: move simple reshaping into transform nodes (JSONata "
            "runs inline and costs no CPU billing)"
        )
    if row["executions"] and row["failed"] / row["executions"] > 0.1:
        out.append(
            f"{row['failed']} of {row['executions']} runs failed after spending: validate inputs earlier "
            "with a condition node"
        )
    return out
