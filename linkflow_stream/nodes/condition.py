"""``condition``: a JSONata boolean; dependants pick a branch with ``"c:true"`` or ``"c:false"``.

An expression that yields nothing counts as false; any other non-boolean result is an error."""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import evaluate, require_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure


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
        result = evaluate(config["expression"], data)
        if result is None:
            # Nothing (e.g. `nodes.a.n > 10` when n is missing) is false, as the reference JSONata
            # defines comparisons with an undefined side; jsonata-python returns undefined there.
            return False
        if not isinstance(result, bool):
            raise NodeFailure("expression_error", f"condition must be a boolean, got {type(result).__name__}")
        return result
