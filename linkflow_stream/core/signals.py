"""Signals for ``wait_event`` nodes: the correlation key a waiting node evaluates, and how a key
given by a sender is written so that both sides compare the same text (ADR 0035)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from linkflow_stream.core.expressions import evaluate
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.workflow import WorkflowDefinition

WAIT_EVENT = "wait_event"
"""The node type that waits for a signal."""

KEY_TIMEOUT_SECONDS = 1.0
"""Time limit of a correlation key's evaluation (it runs in the orchestrator's step)."""

MAX_KEY_CHARS = 256


def signal_names(workflow: WorkflowDefinition) -> list[str]:
    """The signal names a workflow's ``wait_event`` nodes wait on, sorted: a signal by any other
    name would be kept by the run for ever and never taken (the API refuses it, the Kafka intake
    dead-letters it)."""
    return sorted({str(n.config.get("name")) for n in workflow.nodes if n.type == WAIT_EVENT})


def key_text(value: Any) -> str | None:
    """A correlation key as text: a string as is, a number or boolean as JSON; ``None`` for none.
    Raises ``TypeError`` for anything else (an object or a list names no single key)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        raise TypeError(f"a correlation key is a string or a number, not {type(value).__name__}")
    if len(text) > MAX_KEY_CHARS:
        raise ValueError(f"a correlation key has at most {MAX_KEY_CHARS} characters")
    return text


def correlation_key(source: str | None, data: dict[str, Any], *, now: datetime, seed: str) -> str | None:
    """The key a ``wait_event`` node waits with: ``source`` (JSONata) over ``{input, nodes}``.
    Repeatable given ``now`` and ``seed`` (ADR 0015). Raises ``NodeFailure`` when it cannot."""
    if not source:
        return None
    value = evaluate(source, data, timeout_seconds=KEY_TIMEOUT_SECONDS, now=now, seed=seed)
    try:
        return key_text(value)
    except (TypeError, ValueError) as exc:
        raise NodeFailure("expression_error", f"correlation_key: {exc}") from exc
