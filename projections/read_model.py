"""The durable read model: ``linkflow.events`` and the request topics folded into a store.

Each batch the reader hands over is folded in memory (live runs stay there, so folding needs no
database read for them), written to the store in one transaction together with the positions it
brings the fold to (held back for the rows that wait, below), and only then announced to log
followers and the reader's progress (which read-your-writes reads wait on). A crash at any point
leaves the store consistent with its positions; the restart reads on from them, records whose
effect the store holds already change nothing, none is skipped, and the whole log is never read
again.

Waiters (a ``?wait`` caller, a watcher) are told as soon as a fold applies, before its write
(ADR 0058). What they read next comes from memory, or, for what memory does not hold (a page of
runs, log lines, links, a cost report, a finished run its cache let go), from the store after
every fold applied before the read is written (``_written``). The events a waiter is told of are
committed on the log already, so an answer is never taken back by a crash before the write: the
restart folds them again.

Memory keeps runs that have not ended, runs accepted but not started, and a bounded cache of
recently finished ones; everything else is read from the store when asked for.

A run's row is written when the run ends, and while it lives at most once every ``row_delay``
seconds (ADR 0063): a quick run's row is rendered and written once, not once for its request's
batch and again for its events'. The stored positions stay at the first record of each such run
that its row does not hold yet, so a crash loses nothing (the restart folds those records again),
and a read of the store that could list a live run (a page of runs, a cost report) first writes
every row that is behind (links are read from memory for those).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import ConsumerRecord

from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus
from linkflow_stream.kafka.codec import Codec, DecodeError
from projections.costs import RATES, Rates, cost_of, report, since_of
from projections.logs import LEVELS, Line, LogView, lines_for
from projections.status import REVERSE_LINKS, StatusView, body_texts
from projections.store import (
    Changes,
    ExecutionQuery,
    ExecutionRow,
    LineRow,
    NodeNetworkRow,
    Position,
    ReadStore,
    StoredState,
)
from projections.write_order import WriteOrder

log = logging.getLogger(__name__)

YIELD_EVERY = 20
"""Records the fold decodes before it lets the event loop run other work: a batch of 2000 events
is hundreds of milliseconds of CPU, which the orchestrator, the executor and the API (a
high-priority ``?wait`` among them) share with it; every step of a high run (its fetch, its
decision, each round trip of its transaction, its fold ahead) waits for the chunk running."""
YIELD_EVERY_ROW = 5
"""Runs the fold renders (state encoded, body, costs: about a millisecond each) between yields."""
FRESH_SECONDS = 10.0
"""A high run's record older than this (a replay at start-up, a rebuild) is folded ahead but does
not count as high work under way."""
URGENT_LIVE_SECONDS = 1.0
"""How long after the fold ahead last applied an event high-priority work counts as under way (the
in-order fold then gives way: ``urgent_live``)."""
WRITTEN_WAIT_SECONDS = 5.0
"""How long a read of the store waits for the folds applied before it to be written; a store that
fails its writes longer than that (``WRITE_RETRY_SECONDS``) is read as it is, one write behind
what memory shows, as ``/readyz`` says meanwhile."""
ROW_DELAY_SECONDS = 1.0
"""How long a live run's stored row may stay behind memory (``LINKFLOW_VIEWS_ROW_DELAY_SECONDS``)."""


class StoreUnavailable(LinkflowError):
    """A store write failed ``ReadModel.write_attempts`` times in a row."""

    error_type = "unavailable"
    retryable = True


WRITE_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Backoff of a failed store write; the batch is written again (writes are idempotent) and the
views stand still meanwhile: readiness and ``linkflow_view_store_failures_total`` show it."""


@dataclass(frozen=True)
class Topics:
    events: str
    requests: frozenset[str]
    urgent_requests: str | None = None
    """The high-priority request topic: its runs' records are folded ahead (``ReadModel.urgent``)."""
    dlq: str | None = None
    """The dead-letter topic: a start request dead-lettered there ends its pending run (``Rejected``)."""


@dataclass
class _Behind:
    """A live run whose stored row is behind memory."""

    since: float
    """When its row first fell behind (``clock``)."""
    offsets: dict[Position, int]
    """Per partition, the offset of its first record the stored row does not hold."""
    state: ExecutionState | None = None
    """The state its row is rendered from, taken with its write's ticket (``_due``)."""

    def hold(self, position: Position, offset: int) -> None:
        """The stored row does not hold the record at ``offset`` of ``position`` either."""
        self.offsets[position] = min(self.offsets.get(position, offset), offset)


@dataclass(frozen=True)
class Rejected:
    """A start request the orchestrator dead-lettered: its run will never start."""

    request: StartExecution
    reason: str
    at: datetime

    @property
    def execution_id(self) -> str:
        return self.request.execution_id


class ReadModel:
    """The status, log and cost views over one store."""

    def __init__(
        self,
        store: ReadStore,
        codec: Codec,
        topics: Topics,
        *,
        status: StatusView | None = None,
        logs: LogView | None = None,
        on_event: Callable[[ConsumerRecord[bytes, bytes]], None] | None = None,
        on_write_failure: Callable[[], None] | None = None,
        on_rows_written: Callable[[int], None] | None = None,
        rates: Rates = RATES,
        clock: Callable[[], float] = time.monotonic,
        row_delay: float = ROW_DELAY_SECONDS,
        write_attempts: int | None = None,
    ) -> None:
        """``write_attempts``: tries of a store write before it fails with ``StoreUnavailable``
        (None: until the store takes it, as a live engine does: its views stand still and say so
        meanwhile). For a rebuild only, which must end, with why: a fold that raises has changed
        memory and told no log follower, and a live engine's reader takes a fold that fails for
        one that changed nothing (``LogReader``)."""
        self.rates = rates
        self.write_attempts = write_attempts
        self.row_delay = row_delay
        """A live run's row is written at most this often (0: at every batch that changes it)."""
        self._behind: dict[str, _Behind] = {}
        """Live runs whose stored row is behind memory, in the order they fell behind."""
        self._reached: dict[Position, int] = {}
        """The in-order fold's positions; what is stored is held back to ``_behind``'s offsets."""
        self._stored_positions: dict[Position, int] = {}
        """The positions last handed to the store (only changed ones are written again)."""
        self._flushes: set[asyncio.Task[None]] = set()
        self._given_up: Changes | None = None
        """Lines and node rows of writes given up, written with the next write."""
        self._in_flight: dict[int, dict[str, _Behind]] = {}
        """Per write not yet committed, the runs it took off ``_behind``: they hold positions too."""
        self.store = store
        self.codec = codec
        self.topics = topics
        self.status = status or StatusView()
        self.logs = logs or LogView()
        self.on_event = on_event
        self.on_write_failure = on_write_failure
        self.on_rows_written = on_rows_written
        """Told how many runs' rows each write stored (``linkflow_view_rows_written_total``)."""
        self.folded = 0
        """Records folded by this process (a restart that resumes folds few)."""
        self.store_healthy = True
        self._ahead: set[tuple[str, int, int]] = set()
        """Records folded ahead of their batch (topic, partition, offset): skipped when it comes."""
        self._urgent_runs: set[str] = set()
        """Runs whose records go ahead, until they end."""
        self.clock = clock
        self._order = WriteOrder()
        """Folds (and flushes) write and announce in the order they applied (`WriteOrder`)."""
        self._applied = -1
        """The ticket of the last fold applied in memory: a read of the store waits for its write."""
        self._urgent_at: float | None = None
        """When a high run's record was last fetched or folded ahead (``clock``)."""

    # -- start-up ----------------------------------------------------------------------------
    async def load(self) -> dict[Position, int]:
        """Live runs into memory; the positions to read on from."""
        positions = await self.store.positions()
        self._ahead.clear()  # the reader starts again from the stored positions
        self._behind.clear()  # the records a row did not hold are read again
        self._reached, self._stored_positions = dict(positions), dict(positions)
        self._urgent_runs.clear()
        self._order, self._applied = WriteOrder(), -1
        for blob in await self.store.live_states():
            self.status.load(self.codec.decode(blob, ExecutionState))
        return positions

    # -- the fold --------------------------------------------------------------------------------
    async def fold(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Fold one batch, store it with its positions, then tell waiters and followers. Records
        folded ahead of the batch (``fold_ahead``) are not folded again; their positions still
        move with the batch, so a crash re-reads them and the duplicates change nothing. A fold
        ahead may run while this one awaits: a record it takes from this batch is then a
        duplicate here (never applied twice: ``apply`` skips a seq already folded)."""
        positions: dict[Position, int] = {}
        behind: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            if (record.topic, record.partition, record.offset) not in self._ahead:
                behind.append(record)
        await self._fold(behind, positions, ahead=False)
        # Whatever was folded ahead at or below these positions is behind the fold now (a record a
        # fold ahead took while this batch was being decoded is a duplicate here).
        self._ahead = {p for p in self._ahead if p[2] >= positions.get((p[0], p[1]), 0)}
        self.folded += len(records)

    def urgent(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether ``record`` belongs to a high-priority run, so the reader hands it to
        ``fold_ahead`` before the backlog in front of it (ADR 0029): a high ``?wait`` caller then
        waits for its own run's events, not for a low flood's. Known from the request topic the
        record came on, or from the run's state in memory; cheap (no decoding)."""
        if record.key is None:
            return False
        execution_id = record.key.decode(errors="replace")
        fresh = time.time() - record.timestamp / 1000 < FRESH_SECONDS  # not a replay of old records
        if record.topic == self.topics.urgent_requests:
            self._urgent_runs.add(execution_id)
            if fresh:
                self._urgent_at = self.clock()
            return True
        if record.topic != self.topics.events:
            return False
        state = self.status.latest(execution_id)
        if execution_id in self._urgent_runs or (
            state is not None and state.priority is Priority.HIGH and not state.status.terminal
        ):
            self._urgent_runs.add(execution_id)
            if fresh:
                self._urgent_at = self.clock()
            return True
        return False

    def urgent_live(self) -> bool:
        """Whether high-priority runs are moving: one of their records was fetched (a request the
        orchestrator has yet to decide) or folded ahead in the last ``URGENT_LIVE_SECONDS``. (A
        high run that only waits, on a signal or a timer, for hours must not slow the views down
        all that time.)"""
        return self._urgent_at is not None and self.clock() - self._urgent_at < URGENT_LIVE_SECONDS

    async def fold_ahead(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Fold the records of urgent runs before the batches in front of them, without moving
        the stored positions. Only an event that follows the run's state in memory directly is
        applied (one with a gap before it, or of a run memory does not hold, waits for its batch),
        so folding ahead never reorders a run's events; what it applied is stored, then
        announced, and skipped when its batch comes."""
        await self._fold(records, {}, ahead=True)
        self._urgent_runs.clear()  # memory knows every run it applied; later records ask memory

    async def _fold(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], positions: dict[Position, int], *, ahead: bool
    ) -> None:
        decoded: list[tuple[ConsumerRecord[bytes, bytes], ExecutionEvent | StartExecution | Rejected]] = []
        for count, record in enumerate(records, 1):
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                if record.topic == self.topics.dlq:
                    rejected = self._rejected(record)
                    if rejected is not None:
                        decoded.append((record, rejected))
                elif record.topic == self.topics.events:
                    decoded.append((record, self.codec.decode(record.value, ExecutionEvent)))
                    if self.on_event is not None and not ahead:
                        self.on_event(record)
                elif record.topic in self.topics.requests:
                    decoded.append((record, self.codec.decode(record.value, StartExecution)))
            except Exception:
                # Not foldable now or ever (the orchestrator dead-letters such a request); the
                # position moves past it, and the log keeps it for a replay with a fixed codec.
                log.exception("view cannot decode %s[%d]@%d", record.topic, record.partition, record.offset)
        stored = await self._stored_states([item for _r, item in decoded])
        changes = Changes(positions=positions)
        touched: dict[str, ExecutionState] = {}
        moved: dict[str, set[str]] = {}  # per run, the nodes whose usage this fold changed: only
        # their network rows change
        new_lines: dict[str, list[tuple[int, int, Line]]] = {}
        gapped: set[str] = set()
        for record, item in decoded:  # no yield here: a read between a run's request and its
            # events of the same batch would show a finished run as pending
            if isinstance(item, Rejected):
                # Stored: started, or rejected already (by another instance's fold, or before a
                # restart). No log line: a later request may start the run after all, and its
                # log must then be its own.
                failed = None
                if item.execution_id not in stored:
                    failed = self.status.reject(item.request, item.reason, item.at)
                if failed is not None:
                    touched[failed.id] = failed
                    self._fell_behind(failed.id, record)
                    stored[failed.id] = failed  # ended, if memory lets it go before its request
                continue
            if isinstance(item, StartExecution):
                if ahead:
                    self._ahead.add((record.topic, record.partition, record.offset))
                if record.key != item.execution_id.encode():
                    continue  # the orchestrator refuses it (dead-letters it) and never starts it
                if item.execution_id not in stored and self.status.accept(item):
                    self._fell_behind(item.execution_id, record)
                continue
            if ahead:
                known = self.status.known(item.execution_id)
                if known is None:  # a new run; one the store holds (replayed) waits for its batch
                    follows = item.seq == 1 and item.execution_id not in stored
                else:
                    follows = item.seq == known.seq + 1
                if item.execution_id in gapped or not follows:
                    gapped.add(item.execution_id)  # its batch folds it, in order
                    continue
                self._ahead.add((record.topic, record.partition, record.offset))
                if time.time() - record.timestamp / 1000 < FRESH_SECONDS:
                    self._urgent_at = self.clock()
                if self.on_event is not None:
                    self.on_event(record)
            before = None if self.status.known(item.execution_id) else stored.get(item.execution_id)
            try:
                after = self.status.apply(item, before)
            except Exception:
                # An event that cannot follow the state (never written by the single writer); one
                # such record must not stop every view: it is logged and left out.
                log.exception("view cannot apply event %d of %s", item.seq, item.execution_id)
                continue
            if after is None or after is before or after.seq != item.seq:
                continue  # an event of a run whose head was lost to retention, or a duplicate
            touched[after.id] = after
            self._fell_behind(after.id, record)
            if item.node_id is not None and item.usage:
                moved.setdefault(after.id, set()).add(item.node_id)
            if after.status.terminal:
                self._urgent_runs.discard(after.id)
            for n, line in enumerate(lines_for(item, after)):
                changes.lines.append(_line_row(after.id, item.seq, n, line))
                new_lines.setdefault(after.id, []).append((item.seq, n, line))
        if ahead and not touched:
            return
        # Applied: from here on, stored and announced in the order folds applied. A batch that
        # skipped records a fold ahead applied must not store its positions before that fold
        # ahead stored them, and a run's log lines must reach followers in order.
        for state in touched.values():
            if state.id in moved:
                changes.node_network += network_rows(state, moved[state.id])
        for position, offset in positions.items():  # empty for a fold ahead
            self._reached[position] = max(self._reached.get(position, 0), offset)
        self.status.notify(touched.values())  # from memory; store reads wait for this write
        ended = {run for run, state in touched.items() if state.status.terminal}
        await self._write_in_turn(changes, ended, touched)
        for state in touched.values():  # stored: memory may let the oldest finished go now
            if state.status.terminal and state.id in changes.executions:
                self.status.weigh(state.id, len(changes.executions[state.id].state))
        for execution_id, state in touched.items():
            self.logs.publish(execution_id, new_lines.get(execution_id, []), state.status.terminal)

    # -- rows behind memory (ADR 0063) -------------------------------------------------------------
    def _fell_behind(self, execution_id: str, record: ConsumerRecord[bytes, bytes]) -> None:
        """``record`` changed the run in memory and its stored row does not hold it yet."""
        behind = self._behind.get(execution_id)
        if behind is None:
            behind = self._behind[execution_id] = _Behind(self.clock(), {})
        behind.hold((record.topic, record.partition), record.offset)

    def _waited(self, *, every: bool) -> Callable[[_Behind], bool]:
        """Which rows behind the next write takes: ``every`` one, or those that have waited
        ``row_delay`` (all, with no delay)."""
        oldest = self.clock() - self.row_delay
        return lambda behind: every or behind.since <= oldest

    def _due(
        self, ended: set[str], folded: Mapping[str, ExecutionState] | None = None, *, every: bool = False
    ) -> dict[str, _Behind]:
        """The runs whose rows are written now, no longer behind once taken: ``ended`` ones, and
        those behind for ``row_delay`` (all with ``every``), each with its state as it is now.

        Called in the same step as the write takes its ticket: memory then holds only events of
        writes with earlier tickets (each fold applies and takes its ticket without a pause), so a
        row never holds an event whose lines are written after it. (Rendered later from memory, it
        could: a crash between the two writes would then lose those lines, since the restart
        skips the events the stored row holds.)"""
        waited = self._waited(every=every)
        due = {run: behind for run, behind in self._behind.items() if run in ended or waited(behind)}
        for run in due:
            del self._behind[run]
        for run in sorted(ended.difference(due)):
            due[run] = _Behind(self.clock(), {})
        for run, behind in due.items():
            now = (folded or {}).get(run) or self.status.latest(run)
            behind.state = now or behind.state  # kept by a write given up, if memory let it go
        return due

    async def _write_in_turn(
        self,
        changes: Changes,
        ended: set[str],
        folded: Mapping[str, ExecutionState] | None = None,
        *,
        every: bool = False,
    ) -> None:
        """Take a ticket and the runs due (``_due``) in one step, render their rows, wait for the
        ticket's turn, then write them with ``changes``, the positions as they stand then
        (``_positions_to_store``) and whatever earlier writes gave up. Until it commits, the runs
        it took hold the positions back for the other writes (``_in_flight``). A write that ends
        without writing (cancelled at a stop) gives its ticket up (``WriteOrder``): its runs are
        behind again and its lines and node rows go with the next write (a later row may hold
        their events)."""
        ticket = self._order.take()
        self._applied = ticket
        due: dict[str, _Behind] = {}
        written = False
        try:
            due = self._in_flight[ticket] = self._due(ended, folded, every=every)
            for count, (run, behind) in enumerate(due.items()):
                if count % YIELD_EVERY_ROW == 0:
                    # The first yield comes before any row: the ``?wait`` answers ``notify`` woke
                    # go out before this fold renders rows that no caller is waiting for.
                    await asyncio.sleep(0)
                if behind.state is None:
                    continue
                try:
                    changes.executions[run] = self._row(behind.state)
                except Exception:  # one bad state must not stop every write after it
                    log.exception("read model: the row of %s does not render; its records stay held", run)
                    self._behind_again({run: due[run]}, fresh=True)
            await self._order.turn(ticket)
            changes.positions = self._positions_to_store(ticket)
            given_up, self._given_up = self._given_up, None
            if given_up is not None:
                changes.lines[:0] = given_up.lines
                changes.node_network[:0] = given_up.node_network
            if changes:  # a fold that only held positions back (a run's request) has nothing to store
                await self._write(changes)
            written = True
            if self.on_rows_written is not None:
                self.on_rows_written(len(changes.executions))
        finally:
            self._in_flight.pop(ticket, None)
            if not written:
                self._give_up(due, changes)
            self._order.done(ticket)

    def _behind_again(self, taken: Mapping[str, _Behind], *, fresh: bool = False) -> None:
        """Runs a write took are behind again, from their first records (``fresh``: their delay
        starts again, a row that failed to render is not tried at every write)."""
        for run, was in taken.items():
            behind = self._behind.setdefault(run, _Behind(self.clock() if fresh else was.since, {}))
            if not fresh:
                behind.since = min(behind.since, was.since)
            if was.state is not None and (behind.state is None or was.state.seq > behind.state.seq):
                behind.state = was.state
            for position, offset in was.offsets.items():
                behind.hold(position, offset)

    def _give_up(self, due: Mapping[str, _Behind], changes: Changes) -> None:
        self._behind_again(due)
        given_up = self._given_up or Changes()
        given_up.lines += changes.lines
        given_up.node_network += changes.node_network
        self._given_up = given_up
        for position in changes.positions:  # not stored: written again by the next write
            self._stored_positions.pop(position, None)

    def _positions_to_store(self, ticket: int) -> dict[Position, int]:
        """The in-order fold's positions, each held back to the first record that a row behind,
        or a row another write took and has not committed, does not hold: a restart reads those
        records again. Worked out at the write's turn, when every earlier write has committed or
        given its runs back. Only those that moved."""
        held = dict(self._reached)
        taken = [b for t, due in self._in_flight.items() if t != ticket for b in due.values()]
        for behind in itertools.chain(self._behind.values(), taken):
            for position, offset in behind.offsets.items():
                if position in held and offset < held[position]:
                    held[position] = offset
        moved = {p: o for p, o in held.items() if self._stored_positions.get(p) != o}
        self._stored_positions.update(moved)
        return moved

    async def flush(self, *, every: bool = True, within: float | None = WRITTEN_WAIT_SECONDS) -> None:
        """Write the rows behind memory (``every`` one, or those behind for ``row_delay``: a run
        that waits for a timer, a signal or a slot is written though no batch touches it), then
        return once every fold applied so far is written, or after ``within`` seconds (None: no
        limit): a read of the store then reads it as it is, as ``_written`` does. The write goes
        on when the wait ends or is cancelled; one that fails is logged (``_flushed``) and its
        rows are behind again (``_write_in_turn``)."""
        task = asyncio.ensure_future(self._flush(every=every))
        self._flushes.add(task)
        task.add_done_callback(self._flushed)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), within)

    async def close(self) -> None:
        """Cancel the writes still under way (a stop whose store is away): their rows are behind
        again, and the restart folds their records again."""
        for task in list(self._flushes):
            task.cancel()
        await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("read model: writing the rows behind failed", exc_info=task.exception())

    async def write_all(self) -> None:
        """Write every row behind memory now and raise what the write raised: the end of a
        rebuild, which must not report a store it failed to fill (``flush`` logs and goes on)."""
        await self._flush(every=True)

    async def _flush(self, *, every: bool) -> None:
        if not any(map(self._waited(every=every), self._behind.values())):
            await self._written()
            return
        await self._write_in_turn(Changes(), set(), every=every)

    def decodes(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether the fold decodes ``record`` (the reader's ``prepared``): every record but a
        dead letter from elsewhere than a request topic, whose bytes may be anything."""
        return record.topic != self.topics.dlq or _origin(record) in self.topics.requests

    def _rejected(self, record: ConsumerRecord[bytes, bytes]) -> Rejected | None:
        """The start request in a dead letter from a request topic, with why; None for any other
        dead letter (a task, a result, bytes no one could decode: no pending run to end)."""
        if _origin(record) not in self.topics.requests:
            return None
        try:
            request = self.codec.decode(record.value, StartExecution)
        except DecodeError:
            return None  # never decoded here either, so never shown as pending
        if record.key != request.execution_id.encode():
            # Refused for its key: the views never accept such a request, and the run of that id
            # (if any, from a request keyed right) is not this record's to end.
            return None
        reason = dict(record.headers).get("dlq_reason", b"").decode(errors="replace") or "dead-lettered"
        return Rejected(request, reason, from_millis(record.timestamp))

    async def _stored_states(
        self, decoded: Sequence[ExecutionEvent | StartExecution | Rejected]
    ) -> dict[str, ExecutionState]:
        """The stored states of the batch's runs that memory does not hold: runs finished and
        evicted (a late duplicate), runs another instance sharing the store folded, and runs
        whose start request was rejected (seq 0, ended: not to be accepted or rejected again)."""
        missing = sorted(
            {
                item.execution_id
                for item in decoded
                if not self.status.known(item.execution_id) and item.execution_id not in self.status.accepted
            }
        )
        if not missing:
            return {}
        await self._written()  # a run an earlier fold ended and memory let go: its new row
        rows = (await self.store.states(missing)).values()
        found = [self.codec.decode(row.state, ExecutionState) for row in rows]
        return {state.id: state for state in found if state.seq > 0 or state.status.terminal}

    async def _write(self, changes: Changes) -> None:
        """Store the batch; on failure, again with backoff until the store takes it. Writing is
        idempotent, so a write that failed after its commit does no harm when repeated."""
        for attempt in itertools.count():
            try:
                await self.store.write(changes)
            except Exception as exc:
                self.store_healthy = False
                if self.write_attempts is not None and attempt + 1 >= self.write_attempts:
                    raise StoreUnavailable(
                        f"the read model store {self.store.url_for_humans} refused {attempt + 1} "
                        f"writes in a row; the last said: {exc!r}"
                    ) from exc
                if self.on_write_failure is not None:
                    self.on_write_failure()
                pause = WRITE_RETRY_SECONDS[min(attempt, len(WRITE_RETRY_SECONDS) - 1)]
                log.exception(
                    "read model: writing to %s failed (try %d); trying again in %gs",
                    self.store.url_for_humans,
                    attempt + 1,
                    pause,
                )
                await asyncio.sleep(pause)
            else:
                self.store_healthy = True
                return

    def _row(self, state: ExecutionState) -> ExecutionRow:
        return execution_row(state, self.codec, self.rates)

    async def _written(self) -> None:
        """Wait until every fold applied so far is in the store (at most ``WRITTEN_WAIT_SECONDS``):
        a caller told a run ended, reading the run's log or a page of runs next, finds it there."""
        applied = self._applied
        if self._order.written(applied):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITTEN_WAIT_SECONDS):
                await self._order.until_written(applied)

    # -- reads -------------------------------------------------------------------------------------
    async def state(self, execution_id: str) -> ExecutionState | None:
        """A started run's state: memory first, then the store; ``None`` if it has not started
        (or does not exist)."""
        known = self.status.known(execution_id)
        if known is not None and known.seq > 0:
            return known
        row = await self._stored(execution_id)
        if row is None or row.seq == 0:  # not started (accepted, or its start rejected)
            return None
        return self.codec.decode(row.state, ExecutionState)

    async def status_of(self, execution_id: str) -> ExecutionStatus | None:
        """A run's status, ``pending`` for one accepted but not started."""
        known = self.status.status(execution_id)
        if known is not None:
            return known
        row = await self._stored(execution_id)
        return None if row is None else ExecutionStatus(json.loads(row.body)["status"])

    async def _stored(self, execution_id: str) -> StoredState | None:
        """The run's stored row, once every fold applied before this read is written: memory may
        have let a run go that its fold just ended (its finished cache full, or off) while the
        store still has the row it replaces."""
        await self._written()
        return (await self.store.states([execution_id])).get(execution_id)

    async def body(self, execution_id: str) -> dict[str, Any] | None:
        """The ``GET /api/executions/{id}`` body."""
        body = self.status.get(execution_id)
        if body is not None:
            return body
        row = await self._stored(execution_id)
        return None if row is None else dict(json.loads(row.body))

    async def body_text(self, execution_id: str) -> str | None:
        """``body`` as JSON text, for an answer that only passes it on: a live or recently ended
        run's as its row gets it (``status.body_texts``), a stored run's as stored."""
        text = self.status.get_text(execution_id)
        if text is not None:
            return text
        row = await self._stored(execution_id)
        return None if row is None else row.body

    async def linked(self, execution_id: str) -> dict[str, list[str]]:
        """The runs that link to this one, by the body field that lists them (``reruns``, ...)."""
        found: dict[str, list[str]] = {field: [] for field in REVERSE_LINKS.values()}
        await self._written()
        # Rows behind, or taken by a write not committed yet (ADR 0063): memory has their links.
        # Read before the store, so a row written meanwhile is in one of the two.
        waiting = [*self._behind.items(), *(item for due in self._in_flight.values() for item in due.items())]
        behind = {}
        for run, was in waiting:
            state = self.status.latest(run) or was.state
            link = _forward_link(state) if state is not None else {}
            if state is not None and link.get("linked_to") == execution_id:
                behind[run] = (to_millis(state.created_at), run, link["link_kind"])
        links = await self.store.linked(execution_id)  # oldest first
        stored = {run for _kind, run in links}
        links += [(kind, run) for _at, run, kind in sorted(behind.values()) if run not in stored]
        for kind, run in links:
            if kind in REVERSE_LINKS:
                found[REVERSE_LINKS[kind]].append(run)
        return found

    async def page(self, query: ExecutionQuery) -> tuple[list[str], str | None]:
        """A page of runs as stored (their JSON bodies), newest first, and the next page's cursor."""
        await self.flush()
        found = await self.store.page(query)
        return found.bodies, found.next_cursor

    async def lines(
        self,
        execution_id: str,
        *,
        level: str = "debug",
        node_id: str | None = None,
        text: str | None = None,
        limit: int = 10_000,
    ) -> list[tuple[int, int, Line]]:
        """A run's stored lines at ``level`` or above (of one node, containing ``text``), the last
        ``limit``, oldest first, each with its (seq, n)."""
        await self._written()
        rows = await self.store.lines(
            execution_id, floor=LEVELS.index(level), node_id=node_id, text=text, limit=limit
        )
        return [(r.seq, r.n, _line_of(r)) for r in rows]

    async def cost_report(
        self, period: str, now: datetime, group_by: str, team: str | None = None
    ) -> dict[str, Any]:
        """Costs per workflow or team since the period's start, of ``team``'s runs only if given."""
        since = since_of(period, now)
        await self.flush()
        groups = await self.store.cost_groups(
            "workflow_id" if group_by == "workflow" else "team",
            None if since is None else to_millis(since),
            team,
        )
        return report(groups, period, since, group_by)

    # -- retention ------------------------------------------------------------------------------
    async def expire(self, now: datetime, keep: timedelta, batch: int = 500, pause: float = 0.05) -> int:
        """Delete runs that ended more than ``keep`` ago, ``batch`` at a time with a pause between,
        so other writes never wait long. How many went."""
        self.status.forget_finished_before(now - keep)
        cutoff = to_millis(now - keep)
        total = 0
        while True:
            deleted = await self.store.delete_finished_before(cutoff, batch)
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(pause)


def _origin(record: ConsumerRecord[bytes, bytes]) -> str:
    """The topic a dead letter came from (its ``dlq_topic`` header)."""
    origin: bytes = dict(record.headers).get("dlq_topic", b"")
    return origin.decode(errors="replace")


def _line_row(execution_id: str, seq: int, n: int, line: Line) -> LineRow:
    return LineRow(
        execution_id=execution_id,
        seq=seq,
        n=n,
        at=line["at"],
        level=LEVELS.index(line["level"]),
        node_id=line["node_id"],
        message=line["message"],
        data=None if line["data"] is None else json.dumps(line["data"], separators=(",", ":")),
    )


def _line_of(row: LineRow) -> Line:
    return {
        "at": row.at,
        "level": LEVELS[row.level],
        "node_id": row.node_id,
        "message": row.message,
        "data": None if row.data is None else json.loads(row.data),
    }


def network_rows(state: ExecutionState, node_ids: Iterable[str] | None = None) -> list[NodeNetworkRow]:
    """One row per node that moved bytes (of ``node_ids`` only, if given: the nodes whose events a
    fold applied; a row is written when its node's usage comes, not again at every later batch of
    the run, which made a chain of n http nodes write n²/2 rows): the cost report names the node
    that moved most."""
    rows = []
    for node_id in state.nodes if node_ids is None else node_ids:
        node = state.nodes.get(node_id)
        usage = (node.usage if node is not None else None) or {}
        moved = usage.get("request_bytes", 0) + usage.get("response_bytes", 0)
        if moved:
            rows.append(
                NodeNetworkRow(
                    execution_id=state.id,
                    node_id=node_id,
                    workflow_id=state.workflow.id,
                    team=state.workflow.team or "",
                    created_ms=to_millis(state.created_at),
                    seq=state.seq,
                    network_bytes=moved,
                )
            )
    return rows


def execution_row(state: ExecutionState, codec: Codec, rates: Rates = RATES) -> ExecutionRow:
    """The stored row of a run: its state, the columns queries filter on, and its costs."""
    cost = cost_of(state, rates)
    breakdown = cost["breakdown"]
    body, short = body_texts(state)
    return ExecutionRow(
        id=state.id,
        workflow_id=state.workflow.id,
        workflow_version=state.workflow.version,
        team=state.workflow.team or "",
        status=state.status.value,
        priority=state.priority.value,
        created_ms=to_millis(state.created_at),
        finished_ms=to_millis(state.finished_at or state.created_at) if state.status.terminal else None,
        seq=state.seq,
        state=codec.encode(state),
        body=body,
        summary=short,
        total_cost=cost["total_cost"],
        attempts=cost["attempts"],
        retries=sum(max(0, n["attempts"] - 1) for n in cost["nodes"].values()),
        network_bytes=cost["network_bytes"],
        cost_attempts=breakdown["attempts"],
        cost_events=breakdown["events"],
        cost_compute=breakdown["compute"],
        cost_cpu=breakdown["cpu"],
        cost_network=breakdown["network"],
        **_forward_link(state),
    )


def _forward_link(state: ExecutionState) -> dict[str, str]:
    """The one run this run links to, and how, as the row's link columns (none: no columns)."""
    for kind in REVERSE_LINKS:
        target = state.links.get(kind)
        if target:
            return {"linked_to": target, "link_kind": kind}
    return {}
