"""One Kafka transaction per orchestrator batch: records and input offsets commit together.

Each input partition number has its own transactional id (``<app>.orchestrator.<p>``). Starting
a producer with that id fences every earlier holder: the broker bumps the id's epoch and aborts
the former owner's open transaction, so a paused or partitioned former owner (a zombie) can write
nothing visible to ``read_committed`` readers after the takeover. A fenced producer is never
started again by the instance that lost it; only an assignment from the group may start one, or
a zombie would fence the rightful owner back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import OffsetAndMetadata

from linkflow_stream.kafka.records import ProducerRecord

log = logging.getLogger(__name__)

_LOST_OWNERSHIP = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)
BATCH_BYTES = 1024 * 1024
"""The record batch a producer fills per partition before it must wait. aiokafka's default, 16 KB,
holds one run's state record, and a send to a partition whose batch is full waits until that
batch has gone in a produce request, one request in flight per broker: a commit of 21 runs' states
took 21 round trips one after the other (25-45 ms on an idle broker, hundreds under load; 7-9 ms
with 1 MB batches). A 1 MiB batch, header included, fits the broker's default limit (1 MiB + 12
bytes) that every topic has at least; a single larger record still goes in a batch of its own."""
RETRY_BACKOFF_MS = 20
"""How long a transactional producer waits before it sends a refused request again (aiokafka's
default: 100 ms). A transaction that starts right after the previous one committed often has its
first records refused once: the broker checks each transactional produce against the partition's
state (KIP-890), and the previous transaction's commit marker may not have reached that
partition yet, which an older produce version is told as NOT_ENOUGH_REPLICAS. At 100 ms that one
retry was the slowest 3-6% of runs at a single caller (p99 115-145 ms against a p50 of 15-25);
the marker lands within a few milliseconds. A broker that is away is tried every 20 ms instead
of every 100 during a commit, which ``COMMIT_TIMEOUT_SECONDS`` bounds. Such a retry is counted,
not logged as a warning (``produce_retries``)."""
PREPARED_SECONDS = 10.0
"""The longest a transaction ``prepare`` opened is kept for the commit of its batch. A batch is
decided in milliseconds and tried again at once when it fails; a prepared transaction older than
this (its batch given up and the partition quiet since) is aborted and a new one begun, well
before the broker's transaction timeout (aiokafka's default: 60 s) would time it out and fence
this producer."""
COMMIT_TIMEOUT_SECONDS = 30.0
"""aiokafka retries a transactional request or an idempotent batch for as long as the broker is
away; a commit still pending after this long leaves the producer in an unknown state."""


class Fenced(KafkaError):  # type: ignore[misc]
    """Another instance holds this partition's transactional id now: stop writing for it."""

    retriable = False


class ProducerBroken(KafkaError):  # type: ignore[misc]
    """This producer can commit nothing more (a sequence gap after a refused record, an abort
    that failed, a commit that never ended): the partition must be claimed afresh, with a new
    producer and its state read back, before it is decided again.

    ``input_fault`` tells whether a record of the batch caused it (the broker refused it), as
    opposed to the broker being away: only the former counts against the batch's inputs."""

    retriable = False

    def __init__(self, message: str, *, input_fault: bool = False) -> None:
        super().__init__(message)
        self.input_fault = input_fault


class CommitFailed(KafkaError):  # type: ignore[misc]
    """The transaction was aborted (broker away, timeout): nothing of it is visible; try again."""

    retriable = True


class TransactionalProducer(Protocol):
    """What the orchestrator needs of a producer; a fake implements it in unit tests."""

    async def start(self) -> None:
        """Claim the transactional id, fencing any former holder."""

    async def stop(self) -> None:
        """Release the producer; an open transaction is aborted by the broker."""

    async def prepare(self, partitions: Sequence[TopicPartition]) -> None:
        """Open the next transaction now and have the broker add ``partitions`` to it while the
        caller decides what it will write: ``commit`` then writes into it, one round trip sooner
        (ADR 0060). Repeating it, or committing without it, is fine; an open transaction that a
        failed decision left unused is the next ``commit``'s."""

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        """Write ``records`` and move ``group_id``'s ``offsets`` in one transaction (the one
        ``prepare`` opened, if it did).

        Raises ``Fenced`` when ownership is lost, ``ProducerBroken`` when this producer can
        commit nothing more, and ``CommitFailed`` when the transaction was aborted and may be
        tried again."""


class KafkaTransactionalProducer:
    """``TransactionalProducer`` over aiokafka."""

    def __init__(self, bootstrap_servers: str, transactional_id: str, max_request_size: int) -> None:
        self.transactional_id = transactional_id
        self._max_request_size = max_request_size
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            max_request_size=max_request_size,
            max_batch_size=min(BATCH_BYTES, max_request_size),
            client_id=transactional_id,
            retry_backoff_ms=RETRY_BACKOFF_MS,
        )
        self._prepared_at: float | None = None
        """When ``prepare`` began the open transaction, which no record has gone into yet."""

    async def start(self) -> None:
        try:
            await self._producer.start()
        except _LOST_OWNERSHIP as exc:
            await self._producer.stop()
            raise Fenced(f"{self.transactional_id}: {exc}") from exc

    async def stop(self) -> None:
        await self._producer.stop()

    async def prepare(self, partitions: Sequence[TopicPartition]) -> None:
        """Begin the transaction and queue ``partitions`` for AddPartitionsToTxn, which the
        producer's sender then sends on its own while the batch is decided; the records ``commit``
        sends to them need not wait for it. aiokafka adds a partition only when a record for it
        is sent, and has no public way to add one sooner: this uses its transaction manager's
        own method for that, and does nothing (the commit adds them, as before) without it."""
        manager = self._manager
        if manager is None or not hasattr(manager, "maybe_add_partition_to_txn"):
            return
        if not self._unused_prepared(manager):
            await self._begin()
            self._prepared_at = time.monotonic()
        for tp in partitions:
            manager.maybe_add_partition_to_txn(tp)

    @property
    def _manager(self) -> Any:
        """aiokafka's transaction manager of the producer (private: ``prepare`` and ``_begin`` need
        what no public method offers), or None in a version without one."""
        return getattr(self._producer, "_txn_manager", None)

    def _unused_prepared(self, manager: Any) -> bool:
        """Whether the open transaction is one ``prepare`` began recently that holds no record."""
        return (
            manager.is_in_transaction()
            and self._prepared_at is not None
            and time.monotonic() - self._prepared_at < PREPARED_SECONDS
        )

    async def _begin(self) -> None:
        """Begin a transaction, or go on with the one ``prepare`` began for this batch. Raises
        what an earlier request failed with (a prepared AddPartitionsToTxn refused while the batch
        was decided, because another holder fenced this one, is ``Fenced``), aborts a prepared
        transaction kept too long, and fails closed on any other open transaction."""
        producer = self._producer
        manager = self._manager
        if manager is not None:
            await self._raise_failed(manager)
            if self._unused_prepared(manager):
                return
            if manager.is_in_transaction() and self._prepared_at is not None:
                await self._abort(TimeoutError(f"prepared more than {PREPARED_SECONDS:g}s ago"))
        self._prepared_at = None
        try:
            await producer.begin_transaction()
        except _LOST_OWNERSHIP as exc:
            raise Fenced(f"{self.transactional_id}: {exc}") from exc
        except Exception as exc:
            raise ProducerBroken(f"{self.transactional_id}: cannot begin a transaction: {exc!r}") from exc

    async def _raise_failed(self, manager: Any) -> None:
        """If a request of the transaction failed in the producer's background (its manager is in
        an error state, the error kept on the transaction's waiter, where aiokafka's own commit
        would find it), raise it as this module's errors: beginning would trip an assertion."""
        state = getattr(manager, "state", None)
        if state not in (TransactionState.ABORTABLE_ERROR, TransactionState.FATAL_ERROR):
            return
        waiter = getattr(manager, "_transaction_waiter", None)
        failure = (
            waiter.exception() if waiter is not None and waiter.done() and not waiter.cancelled() else None
        )
        cause = failure or RuntimeError(f"transaction in state {state}")
        if isinstance(failure, _LOST_OWNERSHIP):
            raise Fenced(f"{self.transactional_id}: {failure}") from failure
        if state is TransactionState.ABORTABLE_ERROR:
            await self._abort(cause)
            raise CommitFailed(f"{self.transactional_id}: transaction aborted: {cause!r}") from failure
        raise ProducerBroken(f"{self.transactional_id}: {cause!r}") from failure

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        try:
            # Not ``wait_for``, which runs the commit as a task of its own: one more task a
            # transaction, and its end reaches the batch some loop turns later.
            async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                await self._commit(records, offsets, group_id)
        except TimeoutError as exc:
            raise ProducerBroken(
                f"{self.transactional_id}: commit still pending after {COMMIT_TIMEOUT_SECONDS:g} s"
            ) from exc

    async def _commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        producer = self._producer
        await self._begin()
        self._prepared_at = None  # this batch's records go into it from here on
        futures: list[asyncio.Future[Any]] = []
        try:
            await self._send(records, futures)
            if offsets:
                await producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}, group_id
                )
            for future in futures:
                await future
            await producer.commit_transaction()
        except _LOST_OWNERSHIP as exc:
            _settle(futures)
            raise Fenced(f"{self.transactional_id}: {exc}") from exc
        except OutOfOrderSequenceNumber as exc:
            _settle(futures)
            raise ProducerBroken(f"{self.transactional_id}: {exc!r}", input_fault=True) from exc
        except Exception as exc:
            _settle(futures)
            await self._abort(exc)
            if isinstance(exc, KafkaError) and not exc.retriable:
                # A record refused for good: the sequence numbers it took are not given back, so
                # this producer's next transaction would fail with a sequence gap.
                raise ProducerBroken(
                    f"{self.transactional_id}: a record was refused: {exc!r}", input_fault=True
                ) from exc
            raise CommitFailed(f"{self.transactional_id}: transaction aborted: {exc!r}") from exc

    async def _send(self, records: Sequence[ProducerRecord], futures: list[asyncio.Future[Any]]) -> None:
        """Hand ``records`` to the producer, each delivery's future appended to ``futures``.

        A record that names its partition (a run's events and state, most of a transaction) is
        appended to a record batch of that topic-partition built here (``create_batch``), handed
        over whole when full or at the end: about 3 us a record, against about 10 for
        ``send``'s own path (a coroutine chain, a future and a metadata check per record). The
        others go through ``send`` and its partitioner, after the batches of their topic are
        handed over, so each topic-partition's records keep their order either way (a run's
        topics have one kind or the other: ``Partition._encode``). A record too large for a
        request is refused as ``send`` refuses it."""
        producer = self._producer
        batches: dict[tuple[str, int], Any] = {}

        async def hand_over(where: tuple[str, int]) -> None:
            futures.append(await producer.send_batch(batches.pop(where), where[0], partition=where[1]))

        for r in records:
            if r.partition is None:
                # It may land on a partition whose earlier records wait in a batch here.
                for where in [w for w in batches if w[0] == r.topic]:
                    await hand_over(where)
                futures.append(
                    await producer.send(
                        r.topic, r.value, key=r.key, headers=r.headers, timestamp_ms=r.timestamp_ms
                    )
                )
                continue
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(r.key, r.value, r.headers)
            if size > self._max_request_size:
                raise MessageSizeTooLargeError(
                    f"The message is {size} bytes when serialized which is larger than the maximum "
                    "request size you have configured with the max_request_size configuration"
                )
            where = (r.topic, r.partition)
            if where in batches and _append(batches[where], r):
                continue
            if where in batches:  # full
                await hand_over(where)
            batches[where] = producer.create_batch()
            if not _append(batches[where], r):  # an empty batch takes any record, as send's do
                raise RuntimeError(f"an empty record batch refused a record for {r.topic}")
        for where in list(batches):
            await hand_over(where)

    async def _abort(self, cause: Exception) -> None:
        """Abort after ``cause``; a producer that cannot even abort is of no more use."""
        log.warning("%s: aborting transaction after %r", self.transactional_id, cause)
        self._prepared_at = None
        try:
            await self._producer.abort_transaction()
        except _LOST_OWNERSHIP as exc:
            raise Fenced(f"{self.transactional_id}: {exc}") from exc
        except Exception as exc:
            raise ProducerBroken(f"{self.transactional_id}: cannot abort ({exc!r}) after {cause!r}") from exc


def _append(batch: Any, r: ProducerRecord) -> bool:
    """Whether ``batch`` took ``r`` (not: it is full). The timestamp is int milliseconds, as
    ``send`` passes it (aiokafka's docstring says seconds; its C builder would truncate a float)."""
    return batch.append(timestamp=r.timestamp_ms, key=r.key, value=r.value, headers=r.headers) is not None


def _settle(futures: list[asyncio.Future[Any]]) -> None:
    """Retrieve the outcome of every send of a failed transaction, now or when it ends, so none
    is reported as an exception never retrieved; the transaction's failure says it all."""
    for future in futures:
        if future.done():
            if not future.cancelled():
                future.exception()
        else:
            future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
