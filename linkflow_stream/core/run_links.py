"""Runs that start other runs: error workflows and sub-workflows (ADR 0036).

Everything here is a pure function of an execution's state, so the orchestrator's step derives
the same records each time it decides the same input: a start request's execution id is fixed
by the run (and node and attempt) it comes from, and the start intake starts a fixed id at most
once. The links on the started run name where it came from:

* ``error_of``: the run whose failure started this error-workflow run. A run with this link
  starts no error workflow of its own when it fails, so error workflows cannot chain.
* ``parent`` and ``parent_node``: the run and node (of type ``workflow``) waiting for this child.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from linkflow_stream.core.messages import NodeError, NodeResult
from linkflow_stream.core.start_request import EXECUTION_ID, StartRequest
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeStatus
from linkflow_stream.core.workflow import WorkflowDefinition

ERROR_OF = "error_of"
PARENT = "parent"
PARENT_NODE = "parent_node"
PARENT_ATTEMPT = "parent_attempt"
DEPTH = "depth"
"""A child run's nesting depth (a top-level run is 0): bounds calls that loop through others."""
MAX_DEPTH = 16


def derived_id(readable: str, *parts: str) -> str:
    """``readable`` when it is a valid execution id, else a digest of ``parts`` (ids are at most
    128 characters, so a long parent id cannot be embedded whole)."""
    if EXECUTION_ID.fullmatch(readable):
        return readable
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
    return f"{parts[0]}_{digest}"


def error_run_id(execution_id: str) -> str:
    """The id of the error-workflow run a failed run starts."""
    return derived_id(f"onfail-{execution_id}", "onfail", execution_id)


def failed_node(state: ExecutionState) -> str | None:
    """The node whose failure ended the run; ``None`` when the run itself timed out."""
    failed = [(n.finished_at, node_id) for node_id, n in state.nodes.items() if n.status is NodeStatus.FAILED]
    return min(failed)[1] if failed else None


def run_error(state: ExecutionState) -> NodeError:
    """Why a failed or cancelled run ended: its failed node's error, else the run's own reason
    (class ``timeout`` for a run that timed out, ``cancelled`` for a cancelled one)."""
    node = failed_node(state)
    error = state.nodes[node].error if node is not None else None
    if error is not None:
        return error
    reason = (state.history[-1].reason if state.history else None) or state.status.value
    if state.status is ExecutionStatus.CANCELLED:
        return NodeError(error_class="cancelled", message=reason)
    error_class = "timeout" if "timed out" in reason else "internal"
    return NodeError(error_class=error_class, message=reason)


def error_workflow_request(state: ExecutionState) -> StartRequest | None:
    """The start of the workflow's error workflow for a run that just failed, or ``None`` (no
    ``on_failure``, or the run is itself an error-workflow run)."""
    on_failure = state.workflow.on_failure
    if on_failure is None or state.status is not ExecutionStatus.FAILED or ERROR_OF in state.links:
        return None
    error = run_error(state)
    return StartRequest(
        workflow_id=on_failure.workflow_id,
        input={
            "execution_id": state.id,
            "workflow_id": state.workflow.id,
            "failed_node": failed_node(state),
            "error": {"error_class": error.error_class, "message": error.message},
        },
        priority=state.priority,
        execution_id=error_run_id(state.id),
        links={ERROR_OF: state.id},
    )


def child_run_id(parent_id: str, node_id: str, attempt: int) -> str:
    """The id of the child run that attempt ``attempt`` of a ``workflow`` node starts."""
    return derived_id(f"{parent_id}.{node_id}.{attempt}", "child", parent_id, node_id, str(attempt))


def child_depth(state: ExecutionState) -> int:
    """The depth a child of ``state`` runs at; past ``MAX_DEPTH`` its node fails instead."""
    try:
        return int(state.links.get(DEPTH, "0")) + 1
    except ValueError:
        return 1


def child_output(state: ExecutionState) -> Any:
    """A finished child's output for its parent's node: the output of its sink node (one no
    other node depends on) when it has one sink, else ``{sink id: output}`` over every sink
    that succeeded (a sink skipped by a condition is left out)."""
    depended = {d.partition(":")[0] for n in state.workflow.nodes for d in n.depends_on}
    sinks = [n.id for n in state.workflow.nodes if n.id not in depended]
    if len(sinks) == 1:
        return state.nodes[sinks[0]].output
    return {s: state.nodes[s].output for s in sinks if state.nodes[s].status is NodeStatus.SUCCESS}


def parent_result(state: ExecutionState, at: datetime) -> NodeResult | None:
    """The result a finished child reports to its parent's node, or ``None`` (no parent)."""
    parent, node_id = state.links.get(PARENT), state.links.get(PARENT_NODE)
    if parent is None or node_id is None or not state.status.terminal:
        return None
    attempt = int(state.links.get(PARENT_ATTEMPT, "1"))
    ok = state.status is ExecutionStatus.SUCCESS
    error = None
    if not ok:
        child_error = run_error(state)
        error = NodeError(
            error_class=child_error.error_class,
            message=f"child run {state.id} {state.status.value}: {child_error.message}",
            retryable=child_error.retryable,
        )
    return NodeResult(
        execution_id=parent,
        node_id=node_id,
        attempt=attempt,
        ok=ok,
        output=child_output(state) if ok else None,
        error=error,
        started_at=state.started_at or state.created_at,
        finished_at=at,
    )


def referenced_workflows(wf: WorkflowDefinition) -> list[tuple[str, str, int | None]]:
    """The other workflows ``wf`` starts, as (where, workflow id, version or ``None``): its
    error workflow and the children of its ``workflow`` nodes whose id is not computed at
    dispatch. Registration checks that each exists (ADR 0036)."""
    found: list[tuple[str, str, int | None]] = []
    if wf.on_failure is not None and wf.on_failure.workflow_id != wf.id:
        found.append(("on_failure.workflow_id", wf.on_failure.workflow_id, None))
    for node in wf.nodes:
        target = node.config.get("workflow_id")
        if node.type != "workflow" or not isinstance(target, str) or "workflow_id" in (node.input or {}):
            continue
        version = node.config.get("version")
        if "version" in (node.input or {}) or not isinstance(version, int) or isinstance(version, bool):
            version = None
        found.append((f"node {node.id!r}: config.workflow_id", target, version))
    return found


def self_call_problems(wf: WorkflowDefinition) -> list[str]:
    """A ``workflow`` node that calls its own workflow would start runs without end."""
    return [
        f"node {node.id!r}: config.workflow_id: a workflow cannot call itself ({wf.id!r})"
        for node in wf.nodes
        if node.type == "workflow" and node.config.get("workflow_id") == wf.id
    ]
