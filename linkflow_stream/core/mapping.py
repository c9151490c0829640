"""Input and output mapping of a node, in JSONata.

``input`` maps config keys to expressions over ``{"input", "nodes"}``; at dispatch each result
replaces that config key, so a URL, a body or a query parameter can come from earlier nodes.
``output`` is one expression over ``{"output", "input", "nodes"}`` whose result becomes the
node's output. Both are parsed when the workflow is registered; a run-time error fails the
node with class ``expression_error``.
"""

from __future__ import annotations

from typing import Any

from linkflow_stream.core.expressions import compile_expression, evaluate
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.workflow import NodeDefinition


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


def resolve_config(node: NodeDefinition, data: dict[str, Any]) -> dict[str, Any]:
    """The node's config with every mapped key computed from ``data``."""
    if not node.input:
        return node.config
    resolved = dict(node.config)
    for key, source in node.input.items():
        try:
            resolved[key] = evaluate(source, data)
        except NodeFailure as exc:
            raise NodeFailure("expression_error", f"input.{key}: {exc.message}") from exc
    return resolved


def map_output(node: NodeDefinition, output: Any, data: dict[str, Any]) -> Any:
    """The node's output after its ``output`` expression, if it has one."""
    if node.output is None:
        return output
    try:
        return evaluate(node.output, {**data, "output": output})
    except NodeFailure as exc:
        raise NodeFailure("expression_error", f"output: {exc.message}") from exc
