"""Validation of a workflow definition at registration, so bad config is a 400 then, never a
failure at run time. Every message names the node and the field."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import pydantic

from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import compile_expression
from linkflow_stream.core.mapping import mapping_problems
from linkflow_stream.core.node_contract import ConfigError, NodeExecutor, retry_on_problems
from linkflow_stream.core.run_links import self_call_problems
from linkflow_stream.core.topic_names import DEFAULT_POOL
from linkflow_stream.core.workflow import NODE_ID, Dependency, NodeDefinition, WorkflowDefinition


def _pydantic_problems(exc: pydantic.ValidationError, body: Any) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            nodes = body.get("nodes") if isinstance(body, dict) else None
            node_id = (
                nodes[loc[1]].get("id")
                if isinstance(nodes, list) and isinstance(nodes[loc[1]], dict)
                else None
            )
            rest = ".".join(str(p) for p in loc[2:])
            node = f"node {node_id!r}" if node_id is not None else f"nodes[{loc[1]}]"
            where = f"{node}: {rest}" if rest else node
        problems.append(f"{where}: {err['msg']}")
    return problems


def parse_workflow(
    body: Any,
    registry: Mapping[str, NodeExecutor],
    *,
    version: int,
    created_at: datetime,
    pools: Collection[str] | None = None,
) -> WorkflowDefinition:
    """The definition in ``body``, or ``ValidationError`` listing everything wrong with it.

    Validated as JSON in pydantic's strict mode, as every other request body is
    (``http.bodies``): ``"300"`` is not a number of seconds and ``true`` is not one attempt. Lax
    mode turned such values into numbers, so a typo'd definition ran with a budget nobody wrote.
    (Strict JSON still reads an array as a tuple; Python mode would not.)"""
    if not isinstance(body, dict):
        raise ValidationError("the workflow must be a JSON object")
    try:
        text = json.dumps({**body, "version": version, "created_at": created_at.isoformat()})
        wf = WorkflowDefinition.model_validate_json(text, strict=True).model_copy(
            update={"created_at": created_at}
        )
    except pydantic.ValidationError as exc:
        raise ValidationError("invalid workflow: " + "; ".join(_pydantic_problems(exc, body))) from exc
    problems = check_workflow(wf, registry, pools)
    if problems:
        raise ValidationError("invalid workflow: " + "; ".join(problems))
    return wf


def check_workflow(
    wf: WorkflowDefinition, registry: Mapping[str, NodeExecutor], pools: Collection[str] | None = None
) -> list[str]:
    """Everything wrong with ``wf``: ids, types, dependencies, cycles, per-type config, and (when
    ``pools`` is given) task nodes naming a pool that has no task topic."""
    problems: list[str] = []
    if not NODE_ID.match(wf.id):
        problems.append(f"id: {wf.id!r} must match {NODE_ID.pattern}")
    if not wf.nodes:
        problems.append("nodes: a workflow needs at least one node")
    if wf.retry is not None:
        problems.extend(f"retry.{p}" for p in retry_on_problems(wf.retry.retry_on))
    seen: dict[str, NodeDefinition] = {}
    for node in wf.nodes:
        if not NODE_ID.match(node.id):
            problems.append(f"node {node.id!r}: id must match {NODE_ID.pattern}")
        if node.id in seen:
            problems.append(f"node {node.id!r}: duplicate node id")
        seen[node.id] = node
    for node in wf.nodes:
        problems.extend(_check_node(node, seen, registry))
        executor = registry.get(node.type)
        # a node run in the orchestrator uses no pool, but one it names must exist all the same:
        # a typo there would otherwise only surface once the node's type changes. The default
        # counts as none (a definition read back from GET names it on every node)
        named = executor is not None and (
            executor.dispatch is Dispatch.TASK
            or ("pool" in node.model_fields_set and node.pool != DEFAULT_POOL)
        )
        if pools is not None and named and node.pool not in pools:
            problems.append(
                f"node {node.id!r}: pool: no pool {node.pool!r} (pools: {', '.join(sorted(pools)) or 'none'})"
            )
    problems.extend(self_call_problems(wf))
    if wf.concurrency is not None and wf.concurrency.key is not None:
        try:
            compile_expression(wf.concurrency.key)
        except ValueError as exc:
            problems.append(f"concurrency.key: JSONata syntax error: {exc}")
    if not problems:
        cycle = _find_cycle(wf)
        if cycle:
            problems.append("nodes: dependency cycle " + " -> ".join(cycle))
    return problems


RATE_LIMITED_TYPES = ("http", "db")
"""Node types whose outgoing calls a ``rate_limit`` may bound."""


def _rate_limit_problems(node: NodeDefinition) -> list[str]:
    if node.rate_limit is None:
        return []
    if node.type not in RATE_LIMITED_TYPES:
        return [
            f"node {node.id!r}: rate_limit: only {' and '.join(RATE_LIMITED_TYPES)} nodes call out; "
            f"a {node.type} node takes none"
        ]
    if node.rate_limit.key is not None:
        try:
            compile_expression(node.rate_limit.key)
        except ValueError as exc:
            return [f"node {node.id!r}: rate_limit.key: JSONata syntax error: {exc}"]
    return []


def _check_node(
    node: NodeDefinition, nodes: Mapping[str, NodeDefinition], registry: Mapping[str, NodeExecutor]
) -> list[str]:
    problems = mapping_problems(node) + _rate_limit_problems(node)
    if node.retry is not None:
        problems.extend(f"node {node.id!r}: retry.{p}" for p in retry_on_problems(node.retry.retry_on))
    executor = registry.get(node.type)
    if executor is None:
        problems.append(
            f"node {node.id!r}: type: unknown type {node.type!r} (known: {', '.join(sorted(registry))})"
        )
    else:
        try:
            executor.validate(node.config)
        except ConfigError as exc:
            # A field the input mapping computes is checked again, with its value, at dispatch.
            if exc.field not in (node.input or {}):
                problems.append(f"node {node.id!r}: {exc.message}")
        if executor.dispatch is Dispatch.SIGNAL and node.input:
            problems.append(
                f"node {node.id!r}: input: a {node.type} node's config is used as written (its "
                "correlation_key expression reads input and nodes); it takes no input mapping"
            )
    return problems + _dependency_problems(node, nodes)


def _dependency_problems(node: NodeDefinition, nodes: Mapping[str, NodeDefinition]) -> list[str]:
    problems: list[str] = []
    for text in node.depends_on:
        try:
            dep = Dependency.parse(text)
        except ValueError as exc:
            problems.append(f"node {node.id!r}: depends_on: {exc}")
            continue
        target = nodes.get(dep.node)
        if target is None:
            problems.append(f"node {node.id!r}: depends_on: {dep.node!r} is not a node of this workflow")
        elif dep.node == node.id:
            problems.append(f"node {node.id!r}: depends_on: a node cannot depend on itself")
        elif dep.branch is not None and target.type != "condition":
            problems.append(
                f"node {node.id!r}: depends_on: {text!r} picks a branch of a {target.type} node; "
                "only condition nodes have branches"
            )
    return problems


STRUCTURE_NODES_MAX = 5_000
"""``structure_problems`` looks at no larger workflow (its cycle search alone takes about a second
at 50,000 nodes)."""


def structure_problems(wf: WorkflowDefinition, known_types: Collection[str]) -> list[str]:
    """What is wrong with ``wf``'s shape alone: duplicate node ids, unknown types, dependencies,
    cycles. Unlike ``check_workflow`` it compiles no expression or code, so it is cheap enough for
    the orchestrator's loop (a start written straight to a request topic skipped the API's checks
    and could not be decided); an empty list for a workflow over ``STRUCTURE_NODES_MAX`` nodes."""
    if len(wf.nodes) > STRUCTURE_NODES_MAX:
        return []
    problems: list[str] = []
    seen: dict[str, NodeDefinition] = {}
    for node in wf.nodes:
        if node.id in seen:
            problems.append(f"node {node.id!r}: duplicate node id")
        seen[node.id] = node
    for node in wf.nodes:
        if node.type not in known_types:
            problems.append(f"node {node.id!r}: type: unknown type {node.type!r}")
        problems.extend(_dependency_problems(node, seen))
    if not problems:
        cycle = _find_cycle(wf)
        if cycle:
            problems.append("nodes: dependency cycle " + " -> ".join(cycle))
    return problems


def _find_cycle(wf: WorkflowDefinition) -> list[str]:
    """A cycle as a path of node ids, or [] for a DAG (iterative DFS with colours)."""
    edges = {n.id: [Dependency.parse(d).node for d in n.depends_on] for n in wf.nodes}
    colour: dict[str, int] = {}
    for root in edges:
        if colour.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                colour[node] = 1
                path.append(node)
            deps = edges[node]
            if i < len(deps):
                stack.append((node, i + 1))
                nxt = deps[i]
                if colour.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if not colour.get(nxt):
                    stack.append((nxt, 0))
            else:
                colour[node] = 2
                path.pop()
    return []
