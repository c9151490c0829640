"""The HTTP API's sends that Kafka leaves unacknowledged are bounded (``kafka.publisher.Overdue``):
a broker outage with clients retrying every 503 used to add one held send per request, for ever."""

from __future__ import annotations

import asyncio

import pytest

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.http import errors as http_errors
from linkflow_stream.http.errors import acknowledged
from linkflow_stream.kafka.publisher import Backlogged, Overdue, acknowledged_within


class Broker:
    """Stands for Kafka: sends wait until it acknowledges them; counts the sends started."""

    def __init__(self) -> None:
        self.back = asyncio.Event()
        self.started = 0

    async def send(self) -> None:
        self.started += 1
        await self.back.wait()


def test_a_send_past_its_wait_counts_until_it_ends_and_a_full_count_refuses_unsent() -> None:
    async def scenario() -> None:
        broker, overdue = Broker(), Overdue(limit=2)
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await acknowledged_within(broker.send(), 0.01, overdue)
        assert (overdue.count, overdue.full, broker.started) == (2, True, 2)
        with pytest.raises(Backlogged) as refused:
            await acknowledged_within(broker.send(), 0.01, overdue)
        assert refused.value.overdue == 2
        assert broker.started == 2, "the refused send was never started"
        broker.back.set()  # the broker returns: the held sends land
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert (overdue.count, overdue.full) == (0, False)
        await acknowledged_within(broker.send(), 1.0, overdue)
        assert (broker.started, overdue.count) == (3, 0)

    asyncio.run(scenario())


def test_a_send_acknowledged_in_time_or_failing_in_time_never_counts() -> None:
    async def fails() -> None:
        raise ConnectionError("refused")

    async def scenario() -> None:
        overdue = Overdue(limit=1)
        broker = Broker()
        broker.back.set()
        await acknowledged_within(broker.send(), 1.0, overdue)
        with pytest.raises(ConnectionError):
            await acknowledged_within(fails(), 1.0, overdue)
        assert overdue.count == 0

    asyncio.run(scenario())


def test_the_api_answers_a_refused_send_with_a_503_that_says_nothing_was_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_errors, "ACK_SECONDS", 0.01)  # the API's wait, cut to a moment

    async def scenario() -> list[LinkflowError]:
        broker, overdue = Broker(), Overdue(limit=1)
        errors = []
        for _ in range(2):
            with pytest.raises(LinkflowError) as caught:
                await acknowledged(broker.send(), "the start of run r", overdue=overdue)
            errors.append(caught.value)
        assert broker.started == 1
        return errors

    timed_out, refused = asyncio.run(scenario())
    assert timed_out.error_type == refused.error_type == "unavailable"
    assert "was not acknowledged by Kafka" in timed_out.message
    assert refused.message.startswith("the start of run r was not sent: Kafka has not acknowledged 1 earlier")
