"""A run's body as JSON text, rendered once for the ``?wait`` caller's answer and the run's
stored row (``projections.status.body_texts``), never answered from another state's text."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from datetime import timedelta

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from projections import status
from projections.read_model import execution_row
from projections.status import BODY_TEXT_LARGEST, BODY_TEXTS, StatusView, body_texts, render, summary

T0 = from_millis(1_800_000_000_000)


@pytest.fixture(autouse=True)
def no_texts_kept() -> Iterator[None]:
    """Each test starts and ends with nothing kept (the texts are the module's)."""
    status._texts.clear()
    yield
    status._texts.clear()


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
    """A later state of the same run gets its own text (an id reused after the first object was
    let go is ``IdentityMemo``'s, tested in test_identity_memo.py)."""
    first = state("r3", output=1)
    assert json.loads(body_texts(first)[0])["nodes"]["n"]["output"] == 1
    later = state("r3", output=2, seq=4)
    assert json.loads(body_texts(later)[0])["nodes"]["n"]["output"] == 2
    assert first in status._texts and later in status._texts


def test_an_ended_state_let_go_takes_its_text_with_it() -> None:
    """The texts do not keep a state alive: the views let an ended run's state go once its row is
    written, and the collector would otherwise scan it and its nodes for 512 runs more."""
    run = state("r6")
    body_texts(run)
    assert run in status._texts
    gone = weakref.ref(run)
    del run
    assert gone() is None
    assert len(status._texts) == 0


def test_only_ended_runs_are_kept_and_only_the_latest() -> None:
    """A live run's rows (ADR 0063) go through ``body_texts`` too: keeping them would push out
    the ended runs whose ``?wait`` answers made their texts."""
    live = state("r5").model_copy(update={"status": ExecutionStatus.RUNNING, "finished_at": None})
    body_texts(live)
    assert live not in status._texts
    ended = [state(f"many-{n}") for n in range(BODY_TEXTS + 5)]
    for run in ended:
        body_texts(run)
    assert len(status._texts) == BODY_TEXTS // 2 + 1 + 4  # a trim past the bound keeps the newest half
    assert ended[0] not in status._texts and ended[-1] in status._texts


def test_a_large_body_is_not_kept() -> None:
    big = state("r4", output="x" * (BODY_TEXT_LARGEST + 1))
    text, _short = body_texts(big)
    assert len(text) > BODY_TEXT_LARGEST
    assert big not in status._texts
    assert body_texts(big)[0] == text
