"""A run's body as JSON text, rendered once for the ``?wait`` caller's answer and the run's
stored row (``projections.status.body_texts``), never answered from another state's text."""

from __future__ import annotations

import json
from datetime import timedelta

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from projections import status
from projections.read_model import execution_row
from projections.status import BODY_TEXT_LARGEST, BODY_TEXTS, StatusView, body_texts, render, summary

T0 = from_millis(1_800_000_000_000)
WORKFLOW = WorkflowDefinition(id="wf", created_at=T0, nodes=(NodeDefinition(id="n", type="transform"),))


def state(run: str, output: object = 1, seq: int = 3) -> ExecutionState:
    return ExecutionState(
        id=run,
        workflow=WORKFLOW,
        status=ExecutionStatus.SUCCESS,
        priority=Priority.NORMAL,
        input={"x": 1},
        created_at=T0,
        finished_at=T0 + timedelta(seconds=1),
        seq=seq,
        nodes={"n": NodeState(status=NodeStatus.SUCCESS, attempts=1, output=output)},
    )


def test_the_texts_are_the_body_and_its_summary() -> None:
    run = state("r1")
    text, short = body_texts(run)
    assert json.loads(text) == render(run)
    assert json.loads(short) == summary(render(run))
    assert "nodes" not in json.loads(short)


def test_the_row_and_the_wait_answer_get_one_text() -> None:
    """The live view's text (what ``?wait`` answers) is the very text the row stores: rendered
    once, whichever asks first."""
    run = state("r2")
    view = StatusView()
    view.finished["r2"] = run
    answered = view.get_text("r2")
    row = execution_row(run, default_codec())
    assert answered is row.body
    assert json.loads(row.summary) == summary(render(run))
    assert view.get_text("unknown") is None


def test_a_text_is_never_another_states() -> None:
    """Equal content in another object, a later state of the same run, and a state whose object
    id was reused after the first was dropped each get their own text."""
    first = state("r3", output=1)
    assert json.loads(body_texts(first)[0])["nodes"]["n"]["output"] == 1
    later = state("r3", output=2, seq=4)
    assert json.loads(body_texts(later)[0])["nodes"]["n"]["output"] == 2
    twin = state("r3", output=1)
    assert body_texts(twin)[0] == body_texts(first)[0]
    for n in range(BODY_TEXTS + 5):  # more states than are kept: the oldest are let go
        body_texts(state(f"many-{n}"))
    assert len(status._texts) == BODY_TEXTS
    assert all(key == id(kept) for key, (kept, _text, _short) in status._texts.items())
    assert id(first) not in status._texts


def test_a_large_body_is_not_kept() -> None:
    big = state("r4", output="x" * (BODY_TEXT_LARGEST + 1))
    text, _short = body_texts(big)
    assert len(text) > BODY_TEXT_LARGEST
    assert id(big) not in status._texts
    assert body_texts(big)[0] == text
