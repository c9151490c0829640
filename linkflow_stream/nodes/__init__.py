"""Node types and the executor interface they share."""

from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeExecutor, NodeFailure
from linkflow_stream.nodes.registry import build_registry, decider_config

__all__ = ["ConfigError", "NodeContext", "NodeExecutor", "NodeFailure", "build_registry", "decider_config"]
