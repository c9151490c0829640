"""Node types by name: adding a type means adding a module and one line here."""

from __future__ import annotations

from collections.abc import Mapping

from linkflow_stream.core.decider import DeciderConfig, NodeKind
from linkflow_stream.core.node_contract import NodeExecutor
from linkflow_stream.nodes.code import CodeNode
from linkflow_stream.nodes.condition import ConditionNode
from linkflow_stream.nodes.db import DbNode
from linkflow_stream.nodes.http import HttpNode
from linkflow_stream.nodes.secrets import Secrets
from linkflow_stream.nodes.subworkflow import WorkflowNode
from linkflow_stream.nodes.transform import TransformNode
from linkflow_stream.nodes.wait import WaitNode
from linkflow_stream.nodes.wait_event import WaitEventNode
from linkflow_stream.settings import Settings


def build_registry(settings: Settings) -> dict[str, NodeExecutor]:
    executors: list[NodeExecutor] = [
        TransformNode(),
        ConditionNode(),
        WaitNode(),
        WaitEventNode(),
        HttpNode(
            allow_private=settings.http_allow_private_networks,
            max_response_bytes=settings.http_max_response_bytes,
            default_timeout_seconds=settings.http_timeout_seconds,
            secrets=Secrets(settings.secrets),
        ),
        DbNode({name: url.get_secret_value() for name, url in settings.databases.items()}),
        CodeNode(
            warm_sandboxes=settings.code_warm_sandboxes,
            bwrap=settings.code_bwrap,
            kill_grace_seconds=settings.code_kill_grace_seconds,
            # The engine reads an attempt's printout from its result (ctx.logs), never from
            # ``runs``, which would hold the last 256 results, up to 8 MiB each, for nothing.
            keep_runs=0,
        ),
        WorkflowNode(),
    ]
    return {e.type_name: e for e in executors}


def decider_config(registry: Mapping[str, NodeExecutor], settings: Settings) -> DeciderConfig:
    """What the pure decider needs to know of the node types, as plain data."""
    kinds = {name: NodeKind(e.dispatch, e.default_timeout_seconds) for name, e in registry.items()}
    return DeciderConfig(
        kinds=kinds,
        lease_grace_seconds=settings.lease_grace_seconds,
        gate_all=settings.team_max_running is not None,
    )
