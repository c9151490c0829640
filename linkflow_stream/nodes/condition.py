"""``condition``: a JSONata boolean; dependants pick a branch with ``"c:true"`` or ``"c:false"``.

An expression that yields nothing counts as false; any other non-boolean result is an error.
Evaluated like a transform: in a worker thread, stopped at the node's timeout (ADR 0015)."""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import require_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.nodes.expression_worker import evaluate_bounded


class ConditionNode:
    type_name: ClassVar[str] = "condition"
    dispatch: ClassVar[Dispatch] = Dispatch.INLINE
    default_timeout_seconds: ClassVar[float] = 5.0

    def validate(self, config: dict[str, Any]) -> None:
        require_expression(config)
        unknown = set(config) - {"expression"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        result = await evaluate_bounded(
            config["expression"], data, timeout_seconds=ctx.timeout_seconds, now=ctx.now, seed=ctx.seed
        )
        if result is None:
            # Nothing (e.g. `nodes.a.n > 10` when n is missing) is false, as the reference JSONata
            # defines comparisons with an undefined side; jsonata-python returns undefined there.
            return False
        if not isinstance(result, bool):
            raise NodeFailure("expression_error", f"condition must be a boolean, got {type(result).__name__}")
        return result
