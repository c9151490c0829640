"""``workflow``: call another workflow as a child run and wait for it (ADR 0036).

The orchestrator's step starts the child (a ``StartRequest`` with a fixed id) and the node waits
for the child's result on a timer, holding no worker slot. Config: ``workflow_id``, ``version``
(optional; default the latest when the child starts) and ``input`` (optional JSONata over
``{input, nodes}``; default ``{}``), the child's input.
"""

from __future__ import annotations

from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.expressions import compile_expression
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.core.workflow import NODE_ID

DEFAULT_TIMEOUT_SECONDS = 86_400.0
"""How long a node waits for its child unless it sets ``timeout_seconds``: the longest allowed."""
FIELDS = frozenset({"workflow_id", "version", "input"})


class WorkflowNode:
    type_name: ClassVar[str] = "workflow"
    dispatch: ClassVar[Dispatch] = Dispatch.CHILD
    default_timeout_seconds: ClassVar[float] = DEFAULT_TIMEOUT_SECONDS

    def validate(self, config: dict[str, Any]) -> None:
        workflow_id = config.get("workflow_id")
        if not isinstance(workflow_id, str) or not NODE_ID.match(workflow_id):
            raise ConfigError(
                "workflow_id", f"the id of the workflow to call is required ({NODE_ID.pattern})"
            )
        version = config.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ConfigError("version", "must be a version number (1 or more), or absent for the latest")
        expression = config.get("input")
        if expression is not None:
            if not isinstance(expression, str):
                raise ConfigError("input", "must be a JSONata expression over {input, nodes}")
            try:
                compile_expression(expression)
            except ValueError as exc:
                raise ConfigError("input", f"JSONata syntax error: {exc}") from exc
        unknown = set(config) - FIELDS
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        raise NodeFailure(
            "validation", "workflow nodes start child runs; the orchestrator never executes them"
        )
