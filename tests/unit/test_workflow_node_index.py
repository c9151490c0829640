"""``WorkflowDefinition.node``: by an index per definition object, never another's."""

from __future__ import annotations

import weakref
from datetime import UTC, datetime

from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def definition(*ids: str) -> WorkflowDefinition:
    return WorkflowDefinition(
        id="wf", created_at=T0, nodes=tuple(NodeDefinition(id=i, type="transform") for i in ids)
    )


def test_a_copy_with_other_nodes_finds_its_own() -> None:
    """``model_copy`` copies an instance's ``__dict__``: an index kept there would be the
    original's."""
    first = definition("a", "b")
    assert first.node("a").type == "transform"
    copy = first.model_copy(
        update={"nodes": (NodeDefinition(id="a", type="code", config={"code": "return 1"}),)}
    )
    assert copy.node("a").type == "code"
    assert first.node("a").type == "transform"


def test_an_index_does_not_keep_its_definition_alive() -> None:
    wf = definition("a")
    assert wf.node("a").id == "a"
    gone = weakref.ref(wf)
    del wf
    assert gone() is None
