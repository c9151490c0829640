"""The status view: every execution's state, folded from ``linkflow.events``.

The fold is ``linkflow_stream.core.state.apply``, the same one the orchestrator uses, so the view
can never disagree with the engine about what an event means. Duplicated events (a seq already
seen) change nothing. Memory holds what is live; the read-model store holds every run
(``projections.read_model``).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from linkflow_stream.core.clock import iso
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.identity_memo import IdentityMemo
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.signals import WAIT_EVENT
from linkflow_stream.core.state import (
    ExecutionState,
    ExecutionStatus,
    NodeStatus,
    Transition,
    apply,
    pending_nodes,
)

LINKS = ("schedule_id", "rerun_of", "error_of", "parent")
"""The links every body shows (``None`` when the run has none): what started it."""
REVERSE_LINKS = {"rerun_of": "reruns", "parent": "children"}
"""Link -> the field of the linked run's ``GET /api/executions/{id}`` body that lists the runs
linking to it (a rerun's original lists it under ``reruns``)."""


def _iso(dt: datetime | None) -> str | None:
    return iso(dt) if dt else None


def render(state: ExecutionState) -> dict[str, Any]:
    """The ``GET /api/executions/{id}`` body."""
    return {
        "id": state.id,
        "workflow_id": state.workflow.id,
        "workflow_version": state.workflow.version,
        "team": state.workflow.team,
        "status": state.status.value,
        "priority": state.priority.value,
        "input_data": state.input,
        "created_at": _iso(state.created_at),
        "started_at": _iso(state.started_at),
        "finished_at": _iso(state.finished_at),
        "deadline_at": _iso(deadline.due_at) if (deadline := state.timers.get("execution_timeout")) else None,
        **{name: state.links.get(name) for name in LINKS},
        "nodes": {
            node_id: {
                "status": n.status.value,
                "output": n.output,
                "error": n.error.model_dump() if n.error else None,
                "attempts": n.attempts,
                "started_at": _iso(n.started_at),
                "finished_at": _iso(n.finished_at),
                "usage": n.usage,
                "logs": n.logs,
                "reused": n.reused,
            }
            for node_id, n in state.nodes.items()
        },
        "history": [
            {
                "from": t.from_status.value if t.from_status else None,
                "to": t.to_status.value,
                "at": _iso(t.at),
                "reason": t.reason,
            }
            for t in state.history
        ],
    }


DATA_FIELDS = ("input_data", "nodes", "history")
"""What a body holds that grows with the run: its input, every node's output, usage and logs,
and its transitions. A summary leaves them out."""


def summary(body: dict[str, Any]) -> dict[str, Any]:
    """A run's body without its data (``DATA_FIELDS``): who, what, status and times, what a list
    of runs shows (``GET /api/executions?view=summary``). A page of runs with megabyte inputs is
    then a few kilobytes."""
    return {key: value for key, value in body.items() if key not in DATA_FIELDS}


BODY_TEXTS = 1024
"""At most how many ended states' texts ``body_texts`` keeps (from half as many up: ``IdentityMemo``)."""
BODY_TEXT_LARGEST = 64 * 1024
"""A body text longer than this is not kept: it would hold a large input or output twice."""


def _render_texts(state: ExecutionState) -> tuple[str, str]:
    body = render(state)
    return json.dumps(body, separators=(",", ":")), json.dumps(summary(body), separators=(",", ":"))


_texts: IdentityMemo[ExecutionState, tuple[str, str]] = IdentityMemo(
    _render_texts,
    limit=BODY_TEXTS,
    keep=lambda state, texts: state.status.terminal and len(texts[0]) <= BODY_TEXT_LARGEST,
)


def body_texts(state: ExecutionState) -> tuple[str, str]:
    """The JSON text of ``state``'s body and of its summary; an ended run's kept while its state
    object lives, for at most ``BODY_TEXTS`` such objects. A run's final state is rendered for
    the ``?wait`` caller's answer and again for its stored row, moments apart, and rendering and
    encoding a body is a good part of a run's cost in the views (issue 13). A live run's state is
    not kept: no answer takes its text, and its rows (ADR 0063) would push the ended runs' texts
    out.

    Kept by object (``IdentityMemo``, ADR 0070): a state is frozen and no code changes its
    contents, so its text cannot go stale. Called on the event loop's thread only."""
    return _texts(state)


def render_metrics(state: ExecutionState, now: datetime) -> dict[str, Any]:
    """The ``GET /api/executions/{id}/metrics`` body: timings, attempts and resource use, from the
    execution's state alone (a running execution's durations run up to ``now``)."""

    def seconds(start: datetime | None, end: datetime | None) -> float | None:
        return None if start is None else round(((end or now) - start).total_seconds(), 3)

    usage: dict[str, int] = {}
    by_status: dict[str, int] = {}
    nodes = {}
    for node_id, n in state.nodes.items():
        by_status[n.status.value] = by_status.get(n.status.value, 0) + 1
        for key, amount in (n.usage or {}).items():
            usage[key] = usage.get(key, 0) + amount
        nodes[node_id] = {
            "status": n.status.value,
            "attempts": n.attempts,
            "duration_seconds": seconds(n.started_at, n.finished_at),
            "usage": n.usage or {},
        }
    return {
        "id": state.id,
        "workflow_id": state.workflow.id,
        "status": state.status.value,
        "queue_seconds": seconds(
            state.created_at, state.started_at or (None if state.status.terminal else now)
        ),
        "duration_seconds": seconds(state.started_at, state.finished_at),
        "events": state.seq,
        "attempts": sum(n.attempts for n in state.nodes.values()),
        "retries": sum(max(0, n.attempts - 1) for n in state.nodes.values()),
        "nodes_by_status": by_status,
        "usage": usage,
        "nodes": nodes,
    }


def accepted_state(request: StartExecution) -> ExecutionState:
    """The pending state a run accepted but not yet started shows: what it will start from, at
    seq 0 (no event folded yet)."""
    return ExecutionState(
        id=request.execution_id,
        workflow=request.workflow,
        status=ExecutionStatus.PENDING,
        priority=request.priority,
        input=request.input,
        created_at=request.requested_at,
        seq=0,
        nodes=pending_nodes(request.workflow),
        history=(
            Transition(
                from_status=None,
                to_status=ExecutionStatus.PENDING,
                at=request.requested_at,
                reason="accepted",
            ),
        ),
        traceparent=request.traceparent,
        links=request.links,
    )


def waits_on(state: ExecutionState, name: str, key: str) -> bool:
    """Whether a running ``wait_event`` node of ``state`` waits on signal ``name`` with ``key``."""
    return any(
        node.status is NodeStatus.RUNNING
        and node.correlation_key == key
        and (definition := state.workflow.node(node_id)).type == WAIT_EVENT
        and definition.config.get("name") == name
        for node_id, node in state.nodes.items()
    )


Reached = Callable[[ExecutionState], bool]
_Waiter = tuple[Reached, "asyncio.Future[None]"]


FINISHED_CACHE = 1024
"""Finished runs kept in memory after they end (for ``?wait=`` answers and reads right after);
older ones are read from the store."""
FINISHED_CACHE_BYTES = 64 * 1024 * 1024
"""And at most this many bytes of their encoded states (``weigh``; decoded in memory they take a
few times more): a run may hold outputs of up to a megabyte a node, and a thousand such runs
would be gigabytes. The newest finished run always stays."""


class StatusView:
    """What is live, in memory: runs that have started and not ended, runs accepted but not
    started (seq 0), the last finished ones, and the waiters of ``?wait=`` callers. Everything
    else is in the read-model store (``projections.read_model``)."""

    def __init__(
        self, finished_cache: int = FINISHED_CACHE, finished_cache_bytes: int = FINISHED_CACHE_BYTES
    ) -> None:
        self.executions: dict[str, ExecutionState] = {}
        """Started and not ended."""
        self.accepted: dict[str, ExecutionState] = {}
        """Accepted, no event yet: the pending state each will start from."""
        self.finished: OrderedDict[str, ExecutionState] = OrderedDict()
        self.finished_cache = finished_cache
        self.finished_cache_bytes = finished_cache_bytes
        self._finished_sizes: dict[str, int] = {}
        self._finished_bytes = 0
        self.applied = 0
        self.duplicates = 0
        self._waiters: defaultdict[str, list[_Waiter]] = defaultdict(list)
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def known(self, execution_id: str) -> ExecutionState | None:
        """The latest state in memory of a started run (live or recently finished)."""
        return self.executions.get(execution_id) or self.finished.get(execution_id)

    def apply(self, event: ExecutionEvent, before: ExecutionState | None = None) -> ExecutionState | None:
        """Fold one event. ``before`` is the run's stored state when memory has none (a run that
        ended long ago, or one another instance folded further). Waiters hear of it in
        ``notify``, once its batch is applied (before it is stored: ADR 0058)."""
        if before is None:
            before = self.known(event.execution_id)
        if before is not None and before.seq == 0:
            # A rejected start's placeholder (``reject``); a later request started the run after
            # all, and its own log begins here.
            self._forget_finished(event.execution_id)
            before = None
        after = apply(before, event)
        if after is None:
            return None
        if after is before:
            self.duplicates += 1
            return after
        self.applied += 1
        self.accepted.pop(event.execution_id, None)
        if after.status.terminal:
            self.executions.pop(event.execution_id, None)
            self._remember_finished(after)
        else:
            self.executions[event.execution_id] = after
        return after

    def _remember_finished(self, state: ExecutionState) -> None:
        self.finished[state.id] = state
        self.finished.move_to_end(state.id)
        self._trim_finished()

    def weigh(self, execution_id: str, size: int) -> None:
        """The stored size (encoded state) of a finished run in memory, known once its row is
        made: what ``finished_cache_bytes`` counts."""
        if execution_id not in self.finished:
            return
        self._finished_bytes += size - self._finished_sizes.get(execution_id, 0)
        self._finished_sizes[execution_id] = size
        self._trim_finished()

    def _trim_finished(self) -> None:
        while len(self.finished) > self.finished_cache or (
            self._finished_bytes > self.finished_cache_bytes and len(self.finished) > 1
        ):
            oldest, _ = self.finished.popitem(last=False)
            self._finished_bytes -= self._finished_sizes.pop(oldest, 0)

    def _forget_finished(self, execution_id: str) -> None:
        self.finished.pop(execution_id, None)
        self._finished_bytes -= self._finished_sizes.pop(execution_id, 0)

    def forget_finished_before(self, cutoff: datetime) -> None:
        """Drop cached finished runs that ended before ``cutoff`` (their retention is over)."""
        expired = [i for i, st in self.finished.items() if (st.finished_at or st.created_at) < cutoff]
        for execution_id in expired:
            self._forget_finished(execution_id)

    def load(self, state: ExecutionState) -> None:
        """Take a live run from the store (at start-up)."""
        if state.seq == 0:
            self.accepted[state.id] = state
        elif not state.status.terminal:
            self.executions[state.id] = state

    def notify(self, states: Iterable[ExecutionState]) -> None:
        """Wake the waiters whose condition these (applied) states reach, and every watcher of them."""
        for after in states:
            for changed in self._watchers.get(after.id, ()):
                changed.set()
            waiters = self._waiters.get(after.id)
            if waiters:
                for reached, fut in [w for w in waiters if w[0](after)]:
                    waiters.remove((reached, fut))
                    if not fut.done():
                        fut.set_result(None)

    def watch(self, execution_id: str) -> asyncio.Event:
        """An event set each time an applied change of the run is announced (``notify``); the
        watcher clears it, then reads the run. Many changes before it reads are one wake-up, so
        a slow watcher costs one flag, never a backlog (the UI's ``/watch`` WebSocket)."""
        changed = asyncio.Event()
        self._watchers[execution_id].add(changed)
        return changed

    def unwatch(self, execution_id: str, changed: asyncio.Event) -> None:
        watchers = self._watchers.get(execution_id)
        if watchers is not None:
            watchers.discard(changed)
            if not watchers:
                del self._watchers[execution_id]

    def waiting_on(self, name: str, key: str) -> list[ExecutionState]:
        """Live runs with a ``wait_event`` node on signal ``name`` whose correlation key is ``key``
        (waiting now, or parked for a retry of its wait): where a broadcast signal goes."""
        return [state for state in self.executions.values() if waits_on(state, name, key)]

    def active_count(self) -> int:
        """Executions started and not yet ended, as this view knows them."""
        return len(self.executions)

    def accept(self, request: StartExecution) -> bool:
        """Remember a request accepted here or read from a request topic, so a read finds it at
        once; False if the run is already known to have started."""
        if request.execution_id in self.executions or request.execution_id in self.finished:
            return False
        self.accepted.setdefault(request.execution_id, accepted_state(request))
        return True

    def reject(self, request: StartExecution, reason: str, at: datetime) -> ExecutionState | None:
        """A start request the orchestrator dead-lettered (it could not be decided, or its run's
        first records were too large): the run ends before it starts, ``failed`` with the reason,
        instead of showing as pending, and counting as queued, for ever. Its state stays at seq 0
        (no event of its own). None when the run is known to have started (the refused request
        was a duplicate of a started run's) or was rejected already."""
        execution_id = request.execution_id
        if execution_id in self.executions or execution_id in self.finished:
            return None
        pending = self.accepted.pop(execution_id, None) or accepted_state(request)
        why = f"start request rejected: {reason}"
        end = Transition(from_status=pending.status, to_status=ExecutionStatus.FAILED, at=at, reason=why)
        failed = pending.model_copy(
            update={
                "status": ExecutionStatus.FAILED,
                "finished_at": at,
                "history": (*pending.history, end),
            }
        )
        self._remember_finished(failed)
        return failed

    def withdraw(self, execution_id: str) -> None:
        """Forget a run accepted here whose request Kafka did not acknowledge, so it neither shows
        as pending nor counts as queued for ever; one that did reach the log is accepted again
        when the request is read."""
        self.accepted.pop(execution_id, None)

    def latest(self, execution_id: str) -> ExecutionState | None:
        """The latest state in memory of a run: started (``known``), or accepted and not started."""
        return self.known(execution_id) or self.accepted.get(execution_id)

    def get(self, execution_id: str) -> dict[str, Any] | None:
        state = self.latest(execution_id)
        return render(state) if state is not None else None

    def get_text(self, execution_id: str) -> str | None:
        """``get`` as JSON text (``body_texts``: the text the run's stored row gets too)."""
        state = self.latest(execution_id)
        return body_texts(state)[0] if state is not None else None

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Per priority: accepted but not started yet, or waiting for a concurrency slot (queued), and
        started but not ended (running)."""
        counts = {p.value: {"queued": 0, "running": 0} for p in Priority}
        for pending in self.accepted.values():
            counts[pending.priority.value]["queued"] += 1
        for state in self.executions.values():
            waiting = state.status is ExecutionStatus.QUEUED  # behind a concurrency limit (ADR 0030)
            counts[state.priority.value]["queued" if waiting else "running"] += 1
        return counts

    def queued_of_team(self, team: str | None) -> int:
        """Runs of ``team``'s workflows that are queued: accepted and not started, or started and
        waiting (status ``queued``). What admission control counts (``runtime.admission``)."""
        accepted = sum(1 for s in self.accepted.values() if s.workflow.team == team)
        waiting = sum(
            1 for s in self.executions.values() if s.workflow.team == team and s.status.value == "queued"
        )
        return accepted + waiting

    def status(self, execution_id: str) -> ExecutionStatus | None:
        state = self.known(execution_id)
        if state is not None:
            return state.status
        return ExecutionStatus.PENDING if execution_id in self.accepted else None

    async def wait_terminal(self, execution_id: str, within: float) -> bool:
        """Wait until the execution ends; False if ``within`` seconds run out first."""
        return await self._wait(execution_id, within, lambda s: s.status.terminal)

    async def wait_started(self, execution_id: str, within: float) -> bool:
        """Wait until the execution has events (its start was decided), or ended without any
        (its start rejected, ``reject``: look at its status again); False on timeout."""
        return await self._wait(execution_id, within, lambda s: s.seq > 0 or s.status.terminal)

    async def _wait(self, execution_id: str, within: float, reached: Reached) -> bool:
        state = self.known(execution_id)
        if state is not None and reached(state):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (reached, fut)
        self._waiters[execution_id].append(waiter)
        try:
            # ``timeout`` rather than ``wait_for``: the waiter's task wakes in the loop turn after
            # ``notify`` (``wait_for`` goes through a callback and a future of its own, two turns,
            # behind whatever the fold does next).
            async with asyncio.timeout(within):
                await fut
        except TimeoutError:
            # Told in the loop turn the deadline came: told in time (as ``wait_for`` said).
            return fut.done() and not fut.cancelled()
        finally:
            waiters = self._waiters.get(execution_id)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[execution_id]
        return True
