"""``transform``: a JSONata expression over the run's data; its result is the node's output."""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import evaluate, require_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext


class TransformNode:
    type_name: ClassVar[str] = "transform"
    dispatch: ClassVar[Dispatch] = Dispatch.INLINE
    default_timeout_seconds: ClassVar[float] = 5.0

    def validate(self, config: dict[str, Any]) -> None:
        require_expression(config)
        unknown = set(config) - {"expression"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        return evaluate(config["expression"], data)
