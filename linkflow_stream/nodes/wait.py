"""``wait``: a durable timer in the orchestrator's state. It holds no worker slot."""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure

MAX_WAIT_SECONDS = 30 * 86_400


class WaitNode:
    type_name: ClassVar[str] = "wait"
    dispatch: ClassVar[Dispatch] = Dispatch.TIMER
    default_timeout_seconds: ClassVar[float] = float(MAX_WAIT_SECONDS)

    def validate(self, config: dict[str, Any]) -> None:
        seconds = config.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigError("seconds", "a number of seconds is required")
        if not 0 <= seconds <= MAX_WAIT_SECONDS:
            raise ConfigError("seconds", f"must be between 0 and {MAX_WAIT_SECONDS}")
        unknown = set(config) - {"seconds"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        raise NodeFailure("validation", "wait nodes are timers; the orchestrator never executes them")
