"""The status view hears of runs this process's orchestrator ended (``StatusView.settle``) before
its fold of the log reaches them: ``?wait`` and reads answer at once, and the fold takes over."""

from __future__ import annotations

import asyncio

from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, evolve
from projections.status import StatusView
from tests.unit.conftest import Factories, at


def ended(lf: Factories) -> tuple[ExecutionState, list[ExecutionEvent]]:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    run.feed(lf.ok("h", output=1), at(1))
    events = list(run.log)
    assert run.s.status is ExecutionStatus.SUCCESS
    return run.s, events


def test_a_settled_run_wakes_its_waiter_and_reads_show_it_until_the_fold_catches_up(lf: Factories) -> None:
    state, events = ended(lf)
    view = StatusView()
    for event in events[:2]:  # the fold is behind: it has seen the run start only
        view.apply(event)

    async def waiting() -> bool:
        waiter = asyncio.create_task(view.wait_terminal(state.id, 5))
        await asyncio.sleep(0)
        view.settle(state)
        return await waiter

    assert asyncio.run(waiting())
    body = view.get(state.id)
    assert body is not None and body["status"] == "success"
    for event in events[2:]:  # the fold reaches the end: it takes over, nothing is a duplicate
        view.apply(event)
    assert view.duplicates == 0
    assert view.settled == {}
    assert view.get(state.id) == body


def test_only_ended_runs_newer_than_the_fold_are_settled(lf: Factories) -> None:
    state, events = ended(lf)
    view = StatusView()
    running = evolve(evolve(None, events[0]), events[1])
    view.settle(running)  # not ended: nothing to answer early
    assert view.settled == {}
    for event in events:
        view.apply(event)
    view.settle(state)  # the fold already has it
    assert view.settled == {}
