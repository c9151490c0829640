"""The start-request backstop: resend what has no events, a bounded number of times, and only then."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, decide
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, Priority, StartExecution
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.publisher import Outgoing
from linkflow_stream.request_watchdog import CANCEL_RESEND_AFTER, MAX_RESENDS, RESEND_AFTER, RequestWatchdog
from projections.status import StatusView

T0 = from_millis(1_800_000_000_000)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send(self, items: Any) -> None:
        self.sent.extend(items)


def request(execution_id: str) -> StartExecution:
    wf = WorkflowDefinition(
        id="wf", nodes=(NodeDefinition(id="a", type="transform", config={}),), created_at=T0
    )
    return StartExecution(
        execution_id=execution_id, workflow=wf, input={}, priority=Priority.HIGH, requested_at=T0
    )


def watchdog(
    status: StatusView, at: list[datetime], ready: bool = True
) -> tuple[RequestWatchdog, FakePublisher]:
    publisher = FakePublisher()
    dog = RequestWatchdog(status, publisher, ready=lambda: ready, clock=lambda: at[0])  # type: ignore[arg-type]
    return dog, publisher


def test_resends_only_requests_without_events_after_the_grace_period() -> None:
    status = StatusView()
    status.accept(request("lost"))
    status.accept(request("started"))
    status.apply(
        ExecutionEvent(
            execution_id="started",
            seq=1,
            type=EventType.EXECUTION_CREATED,
            at=T0,
            workflow=request("started").workflow,
            input={},
        )
    )
    at = [T0 + RESEND_AFTER - timedelta(milliseconds=1)]
    dog, publisher = watchdog(status, at)
    assert asyncio.run(dog.check()) == 0
    at[0] = T0 + RESEND_AFTER
    assert asyncio.run(dog.check()) == 1
    [sent] = publisher.sent
    assert (sent.topic, sent.key, sent.record) == ("linkflow.requests.high", "lost", request("lost"))


def test_resends_are_spaced_and_bounded() -> None:
    status = StatusView()
    status.accept(request("poison"))
    at = [T0]
    dog, publisher = watchdog(status, at)
    for step in range(1, 10):
        at[0] = T0 + RESEND_AFTER * step
        asyncio.run(dog.check())
    assert len(publisher.sent) == MAX_RESENDS


def test_nothing_is_resent_before_the_views_have_caught_up() -> None:
    status = StatusView()
    status.accept(request("replaying"))
    dog, publisher = watchdog(status, [T0 + RESEND_AFTER * 5], ready=False)
    assert asyncio.run(dog.check()) == 0
    assert publisher.sent == []


def test_a_cancel_is_sent_again_while_the_run_goes_on_and_forgotten_once_it_ends() -> None:
    status = StatusView()
    status.accept(request("e1"))
    for event in decide(None, request("e1"), T0, DeciderConfig()):
        status.apply(event)
    at = [T0]
    dog, publisher = watchdog(status, at)
    dog.watch_cancel("e1")
    at[0] = T0 + CANCEL_RESEND_AFTER - timedelta(milliseconds=1)
    assert asyncio.run(dog.check()) == 0
    at[0] = T0 + CANCEL_RESEND_AFTER
    assert asyncio.run(dog.check()) == 1
    [sent] = publisher.sent
    assert (sent.topic, sent.key, sent.record.kind.value) == ("linkflow.commands", "e1", "cancel")
    cancel = ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL)
    for event in decide(status.executions["e1"], cancel, at[0], DeciderConfig()):
        status.apply(event)
    at[0] = T0 + CANCEL_RESEND_AFTER * 10
    assert asyncio.run(dog.check()) == 0, "the run ended: nothing more to send"
    assert dog.cancels == {}
