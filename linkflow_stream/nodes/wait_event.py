"""``wait_event``: waits in the orchestrator's state for a signal (ADR 0035). Holds no worker slot.

Config: ``name`` (the signal it takes), ``timeout_seconds`` (how long it waits; past it the node
fails with class ``timeout``), ``correlation_key`` (optional JSONata over ``{input, nodes}``: the
key a broadcast signal must carry to reach this run). The consumed signal's payload is the output.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import compile_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.core.signals import WAIT_EVENT

MAX_WAIT_SECONDS = 30 * 86_400
SIGNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""A signal's name: it is a path segment of ``/api/executions/{id}/events/{name}``."""


class WaitEventNode:
    type_name: ClassVar[str] = WAIT_EVENT
    dispatch: ClassVar[Dispatch] = Dispatch.SIGNAL
    default_timeout_seconds: ClassVar[float] = float(MAX_WAIT_SECONDS)

    def validate(self, config: dict[str, Any]) -> None:
        name = config.get("name")
        if not isinstance(name, str) or not SIGNAL_NAME.match(name):
            raise ConfigError("name", f"a signal name matching {SIGNAL_NAME.pattern} is required")
        seconds = config.get("timeout_seconds")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ConfigError("timeout_seconds", "must be a number of seconds")
            if not 0 < seconds <= MAX_WAIT_SECONDS:
                raise ConfigError("timeout_seconds", f"must be above 0 and at most {MAX_WAIT_SECONDS}")
        key = config.get("correlation_key")
        if key is not None:
            if not isinstance(key, str) or not key.strip():
                raise ConfigError("correlation_key", "must be a JSONata expression (a string)")
            try:
                compile_expression(key)
            except ValueError as exc:
                raise ConfigError("correlation_key", f"JSONata syntax error: {exc}") from exc
        unknown = set(config) - {"name", "timeout_seconds", "correlation_key"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        raise NodeFailure(
            "validation", "wait_event nodes wait for signals; the orchestrator never executes them"
        )
