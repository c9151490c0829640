"""Input and output mapping of a node, in JSONata.

``input`` maps config keys to expressions over ``{"input", "nodes"}``; at dispatch each result
replaces that config key, so a URL, a body or a query parameter can come from earlier nodes.
``output`` is one expression over ``{"output", "input", "nodes"}`` whose result becomes the
node's output. Both are parsed when the workflow is registered; a run-time error fails the
node with class ``expression_error``.

Mappings run synchronously in the orchestrator step, on the event loop, so each is bounded by
``MAPPING_TIMEOUT_SECONDS`` (class ``timeout`` past it) and, given ``now`` and ``seed``, is
deterministic like an inline node (ADR 0015).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from linkflow_stream.core.expressions import compile_expression, evaluate
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.rate_limit import RateLimitBucket
from linkflow_stream.core.workflow import NodeDefinition

MAPPING_TIMEOUT_SECONDS = 1.0
"""Time limit of a node's input mapping (all its keys together) and, apart from it, of its
output mapping. A small fixed budget rather than the node's timeout: a mapping runs on the
event loop and stalls everything else meanwhile, and an HTTP node's timeout bounds its call
(it may be minutes), not the reshaping of its config or result (microseconds when sane)."""


def mapping_problems(node: NodeDefinition) -> list[str]:
    """What is wrong with the node's mapping expressions, as registration messages."""
    problems = []
    for key, source in (node.input or {}).items():
        try:
            compile_expression(source)
        except ValueError as exc:
            problems.append(f"node {node.id!r}: input.{key}: JSONata syntax error: {exc}")
    if node.output is not None:
        try:
            compile_expression(node.output)
        except ValueError as exc:
            problems.append(f"node {node.id!r}: output: JSONata syntax error: {exc}")
    return problems


def resolve_config(
    node: NodeDefinition,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
    seed: str | None = None,
    timeout_seconds: float = MAPPING_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The node's config with every mapped key computed from ``data``.

    ``now`` is what ``$now()`` and ``$millis()`` return; ``seed`` seeds ``$random()``, apart for
    each key (``{seed}/input.{key}``). The keys share one time limit of ``timeout_seconds``."""
    if not node.input:
        return node.config
    resolved = dict(node.config)
    deadline = time.monotonic() + timeout_seconds
    for key, source in node.input.items():
        where = f"input.{key}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(where, "input mapping", timeout_seconds)
        try:
            resolved[key] = evaluate(
                source, data, timeout_seconds=remaining, now=now, seed=_part(seed, where)
            )
        except NodeFailure as exc:
            raise _mapping_failure(where, "input mapping", exc, timeout_seconds) from exc
    return resolved


def map_output(
    node: NodeDefinition,
    output: Any,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
    seed: str | None = None,
    timeout_seconds: float = MAPPING_TIMEOUT_SECONDS,
) -> Any:
    """The node's output after its ``output`` expression, if it has one; ``now`` and ``seed``
    (as ``{seed}/output``) as for ``resolve_config``."""
    if node.output is None:
        return output
    try:
        return evaluate(
            node.output,
            {**data, "output": output},
            timeout_seconds=timeout_seconds,
            now=now,
            seed=_part(seed, "output"),
        )
    except NodeFailure as exc:
        raise _mapping_failure("output", "output mapping", exc, timeout_seconds) from exc


def _part(seed: str | None, part: str) -> str | None:
    """A seed of its own for each expression, so two keys that call ``$random()`` differ."""
    return None if seed is None else f"{seed}/{part}"


def _mapping_failure(where: str, what: str, exc: NodeFailure, timeout_seconds: float) -> NodeFailure:
    """The failure named after the field; a timeout names the mapping's own limit."""
    if exc.error_type == "timeout":
        return _timed_out(where, what, timeout_seconds)
    return NodeFailure(exc.error_type, f"{where}: {exc.message}", retryable=exc.retryable)


def _timed_out(where: str, what: str, timeout_seconds: float) -> NodeFailure:
    return NodeFailure(
        "timeout", f"{where}: the {what} ran past its time limit of {timeout_seconds:g} s", retryable=False
    )


def rate_limit_bucket(
    workflow_id: str,
    node: NodeDefinition,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
    seed: str | None = None,
    timeout_seconds: float = MAPPING_TIMEOUT_SECONDS,
) -> RateLimitBucket | None:
    """The bucket an attempt of ``node`` draws from, its ``rate_limit.key`` evaluated over ``data``
    (a string as it is, anything else as its JSON, nothing as the empty string); ``None`` for a
    node without a limit. A key that fails to evaluate fails the node like a mapping."""
    limit = node.rate_limit
    if limit is None:
        return None
    value = ""
    if limit.key is not None:
        try:
            found = evaluate(
                limit.key, data, timeout_seconds=timeout_seconds, now=now, seed=_part(seed, "key")
            )
        except NodeFailure as exc:
            raise _mapping_failure("rate_limit.key", "rate limit key", exc, timeout_seconds) from exc
        if found is not None:
            value = found if isinstance(found, str) else json.dumps(found, sort_keys=True, default=str)
    return RateLimitBucket(
        key=f"{workflow_id}/{node.id}/{value}", per_second=limit.per_second, burst=limit.burst
    )
