"""The transaction's commit bound (ADR 0074: ``asyncio.timeout`` in the caller's task, not a
task of its own): a commit the broker never ends is given up as ``ProducerBroken``, and a stop
that cancels a commit under way is a cancel, not a broken producer. aiokafka's producer is
replaced by a stand-in whose commit never returns; the real one is in
tests/integration/test_transactions.py."""

from __future__ import annotations

import asyncio

import pytest

from linkflow_stream.kafka import transactions
from linkflow_stream.kafka.transactions import KafkaTransactionalProducer, ProducerBroken


class _Hanging:
    """Begins transactions at once; its commit never ends."""

    def __init__(self) -> None:
        self.committing = asyncio.Event()

    async def begin_transaction(self) -> None:
        return None

    async def commit_transaction(self) -> None:
        self.committing.set()
        await asyncio.Event().wait()


def _producer(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaTransactionalProducer, _Hanging]:
    hanging = _Hanging()
    monkeypatch.setattr(transactions, "AIOKafkaProducer", lambda **_settings: hanging)
    return KafkaTransactionalProducer("127.0.0.1:9", "t.orchestrator.0", 1_000_000), hanging


async def test_a_commit_the_broker_never_ends_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "COMMIT_TIMEOUT_SECONDS", 0.05)
    producer, hanging = _producer(monkeypatch)
    with pytest.raises(ProducerBroken, match=r"still pending after 0\.05 s"):
        await producer.commit([], {}, "group")
    assert hanging.committing.is_set(), "it was committing when the bound struck"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the bound's cancel is spent"


async def test_a_stop_during_a_commit_is_a_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, hanging = _producer(monkeypatch)
    commit = asyncio.create_task(producer.commit([], {}, "group"))
    await hanging.committing.wait()
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
