"""Evaluating an expression reads only what it names from its input (ADR 0039): jsonata-python's
walk over the whole input at each evaluation is off, so a node's expression costs the same
however many nodes ran before it."""

from __future__ import annotations

from linkflow_stream.core.expressions import compile_expression, evaluate


def test_the_input_is_not_walked_at_each_evaluation() -> None:
    # A value the walk would refuse (not a JSON type) where the expression does not look: with
    # the walk on, this raised "Only JSON types ... are allowed as input".
    data = {"input": {"n": 1}, "nodes": {"a": {"n": 2}, "other": {"x": object()}}}
    assert evaluate("input.n + nodes.a.n", data) == 3
    assert compile_expression("input.n + nodes.a.n").is_validate_input() is False
