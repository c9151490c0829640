"""What "exactly once" means for an execution's committed event log, checked from outside.

Read as a ``read_committed`` reader (every view, the executor and replay read so): no two
records share (execution, seq); seqs run 1..n with no gap; there is exactly one terminal event
and nothing after it; folding the log gives the run the API reports; and the orchestrator's
committed state changelog ends, for each execution, in that same state (or in a tombstone once
the finished run was forgotten), so no stale state from a former owner survives.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.dev.testing import EngineProcess, read_changelog_tail, read_events

TERMINAL = {EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}


def committed_logs(engine: EngineProcess, ids: Iterable[str]) -> dict[str, list[ExecutionEvent]]:
    wanted = set(ids)
    events = asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}linkflow.events"))
    logs: defaultdict[str, list[ExecutionEvent]] = defaultdict(list)
    for event in events:
        if event.execution_id in wanted:
            logs[event.execution_id].append(event)
    return dict(logs)


def assert_exactly_once(engine: EngineProcess, ids: Iterable[str]) -> dict[str, ExecutionState]:
    """Check every execution's committed log; returns each execution's folded state."""
    ids = list(ids)
    logs = committed_logs(engine, ids)
    assert set(logs) == set(ids), f"no events at all for {sorted(set(ids) - set(logs))}"
    states = {}
    for execution_id, log in logs.items():
        seqs = [e.seq for e in log]
        assert len(seqs) == len(set(seqs)), f"{execution_id}: a (execution, seq) was committed twice: {seqs}"
        assert seqs == list(range(1, len(seqs) + 1)), f"{execution_id}: seqs are not 1..n in order: {seqs}"
        ends = [e for e in log if e.type in TERMINAL]
        assert len(ends) == 1, f"{execution_id}: {len(ends)} terminal events"
        assert log[-1].type in TERMINAL, f"{execution_id}: events after the end"
        state: ExecutionState | None = None
        for event in log:
            state = evolve(state, event)
        assert state is not None
        states[execution_id] = state
    changelog = asyncio.run(
        read_changelog_tail(engine.bootstrap, f"{engine.prefix}linkflow.state.executions")
    )
    for execution_id, state in states.items():
        stored = changelog.get(execution_id, "missing")
        if stored is None:
            continue  # tombstoned: finished and forgotten
        assert stored != "missing", f"{execution_id}: no state in the changelog"
        assert isinstance(stored, ExecutionState)
        assert (stored.seq, stored.status) == (state.seq, state.status), (
            f"{execution_id}: the changelog ends at seq {stored.seq} ({stored.status}), the events at "
            f"{state.seq} ({state.status})"
        )
    return states
