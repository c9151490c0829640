"""Rerunning a finished run: which of its nodes' outputs the new run takes instead of running them.

Rerun ``from: failed`` keeps the work that is still good: a node is reused when it succeeded in
the original run, nothing upstream of it there failed, was cancelled or timed out (those are the
parts being repaired), it exists unchanged in the workflow version the rerun runs, and every node
it depends on in that version is reused too (so a reused node never sits downstream of one that
runs again). Everything else runs again. ``from: start`` reuses nothing. Pure.
"""

from __future__ import annotations

from typing import Any

from linkflow_stream.core.state import ExecutionState, NodeStatus
from linkflow_stream.core.workflow import Dependency, WorkflowDefinition

BROKEN = frozenset({NodeStatus.FAILED, NodeStatus.CANCELLED})
"""What a node that was repaired ended as (a node running at a timeout ends cancelled)."""


def _ancestors(workflow: WorkflowDefinition) -> dict[str, set[str]]:
    """Every node's transitive dependencies (the workflow is acyclic: validation saw to it)."""
    deps = {n.id: {Dependency.parse(d).node for d in n.depends_on} for n in workflow.nodes}
    found: dict[str, set[str]] = {}

    def of(node_id: str) -> set[str]:
        if node_id not in found:
            found[node_id] = set()  # an acyclic graph never comes back here before it is filled
            for dep in deps[node_id]:
                found[node_id] |= {dep, *of(dep)}
        return found[node_id]

    for node_id in deps:
        of(node_id)
    return found


def reusable_outputs(original: ExecutionState, workflow: WorkflowDefinition) -> dict[str, Any]:
    """Node id -> output of every node of ``original`` a rerun running ``workflow`` reuses."""
    before = _ancestors(original.workflow)
    broken = {n for n, s in original.nodes.items() if s.status in BROKEN}
    good = {
        n for n, s in original.nodes.items() if s.status is NodeStatus.SUCCESS and not (before[n] & broken)
    }
    old = {n.id: n for n in original.workflow.nodes}
    reused: dict[str, Any] = {}
    ancestors = _ancestors(workflow)
    # fewer ancestors first: a node has strictly more than each of its dependencies, so they come first
    for node in sorted(workflow.nodes, key=lambda n: len(ancestors[n.id])):
        same = node.id in good and old[node.id] == node
        deps_reused = all(Dependency.parse(d).node in reused for d in node.depends_on)
        if same and deps_reused:
            reused[node.id] = original.nodes[node.id].output
    return reused
