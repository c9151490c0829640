"""JSONata expressions, parsed once and cached: shared by transform, condition and validation."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jsonata

from linkflow_stream.core.node_contract import ConfigError, NodeFailure


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    """The parsed expression; raises ``ValueError`` with JSONata's message on a syntax error."""
    try:
        return jsonata.Jsonata(source)
    except Exception as exc:
        raise ValueError(str(exc)) from exc


def require_expression(config: dict[str, Any], field: str = "expression") -> str:
    """Validate that ``config[field]`` is a JSONata expression that parses."""
    source = config.get(field)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(field, "a JSONata expression (non-empty string) is required")
    try:
        compile_expression(source)
    except ValueError as exc:
        raise ConfigError(field, f"JSONata syntax error: {exc}") from exc
    return source


def evaluate(source: str, data: dict[str, Any]) -> Any:
    """Evaluate over ``data``; a run-time error is a non-retryable ``expression_error``."""
    try:
        return compile_expression(source).evaluate(data)
    except Exception as exc:
        raise NodeFailure("expression_error", f"JSONata evaluation failed: {exc}") from exc
