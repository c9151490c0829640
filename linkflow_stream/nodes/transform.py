"""``transform``: a JSONata expression over the run's data; its result is the node's output.

It runs inline in the orchestrator, so it is evaluated in a worker thread and stopped at the
node's timeout (ADR 0015): a runaway expression fails its node as ``timeout`` while the event
loop keeps serving."""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import require_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext
from linkflow_stream.nodes.expression_worker import evaluate_bounded


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
        return await evaluate_bounded(
            config["expression"], data, timeout_seconds=ctx.timeout_seconds, now=ctx.now, seed=ctx.seed
        )
