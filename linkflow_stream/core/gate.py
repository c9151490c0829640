"""The gate: which queued runs may start now, under workflow concurrency limits and team caps.

Pure and deterministic, like the decider (ADR 0030). The gate's state is every run it knows
that has not ended: queued ones (in arrival order) and admitted ones (holding a slot). One
``step`` takes the requests of a batch (``enqueue`` when a gated run is created, ``release``
when it ends, whether it was admitted or still queued) and returns the new state and the runs
admitted, in the order their ``admit`` commands are sent.

Rules of admission: a run is admitted when

- it is the earliest queued run of its slot (a workflow and key value: FIFO per slot),
- its slot holds fewer than its ``max`` admitted runs (no limit when ``max`` is ``None``), and
- its team holds fewer than ``team_cap`` admitted runs (no cap when ``None``).

Teams with admissible runs take turns (round robin, from the team after the last one admitted),
one admission per turn; within a team the earliest admissible run goes first. Admission goes on
until no queued run is admissible, so a free slot never stays free while a run could take it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class GateRequestKind(StrEnum):
    ENQUEUE = "enqueue"
    RELEASE = "release"


class GateRequest(BaseModel):
    """A run's request to the gate: the value of ``linkflow.gate``."""

    model_config = ConfigDict(frozen=True)

    kind: GateRequestKind
    execution_id: str
    team: str = ""
    """The run's workflow's team (``""``: none)."""
    slot: str = ""
    """The workflow and key value whose ``max`` limits the run (``""`` with no limit)."""
    max: int | None = None
    requested_at: datetime


class GateEntry(BaseModel):
    """A run the gate holds (``linkflow.state.gate``, key ``run:<execution id>``)."""

    model_config = ConfigDict(frozen=True)

    execution_id: str
    team: str = ""
    slot: str = ""
    max: int | None = None
    seq: int
    """Arrival order: queued runs are admitted by it (per slot, and per team)."""
    running: bool = False
    """Admitted: holds a slot until its release."""


class GateMeta(BaseModel):
    """The gate's counters (``linkflow.state.gate``, key ``meta``)."""

    model_config = ConfigDict(frozen=True)

    next_seq: int = 0
    last_team: str | None = None
    """The team admitted last: the round robin goes on from the team after it."""


class GateRecord(BaseModel):
    """One record of ``linkflow.state.gate``: an entry (key ``run:<id>``) or the meta (key ``meta``)."""

    model_config = ConfigDict(frozen=True)

    entry: GateEntry | None = None
    meta: GateMeta | None = None


@dataclass
class GateState:
    entries: dict[str, GateEntry] = field(default_factory=dict)
    meta: GateMeta = field(default_factory=GateMeta)

    def copy(self) -> GateState:
        return GateState(dict(self.entries), self.meta)

    def running(self) -> list[GateEntry]:
        return [e for e in self.entries.values() if e.running]

    def queued(self) -> list[GateEntry]:
        return sorted((e for e in self.entries.values() if not e.running), key=lambda e: e.seq)


def apply(state: GateState, request: GateRequest) -> None:
    """Fold one request into ``state`` (in place). A repeated enqueue and the release of a run the
    gate does not hold change nothing."""
    if request.kind is GateRequestKind.ENQUEUE:
        if request.execution_id in state.entries:
            return
        state.entries[request.execution_id] = GateEntry(
            execution_id=request.execution_id,
            team=request.team,
            slot=request.slot,
            max=request.max,
            seq=state.meta.next_seq,
        )
        state.meta = state.meta.model_copy(update={"next_seq": state.meta.next_seq + 1})
    else:
        state.entries.pop(request.execution_id, None)


def admit(state: GateState, team_cap: int | None) -> list[str]:
    """Admit (in place) every run that may start now; their ids in admission order."""
    slot_running: Counter[str] = Counter()
    team_running: Counter[str] = Counter()
    for e in state.running():
        team_running[e.team] += 1
        if e.max is not None:
            slot_running[e.slot] += 1
    queues: dict[str, list[GateEntry]] = {}
    slot_queues: dict[str, list[GateEntry]] = {}
    for e in state.queued():
        queues.setdefault(e.team, []).append(e)
        if e.max is not None:
            slot_queues.setdefault(e.slot, []).append(e)

    def admissible(e: GateEntry) -> bool:
        if team_cap is not None and team_running[e.team] >= team_cap:
            return False
        if e.max is None:
            return True
        return slot_queues[e.slot][0] is e and slot_running[e.slot] < e.max

    admitted: list[str] = []
    progressed = True
    while progressed:
        progressed = False
        teams = sorted(t for t, q in queues.items() if q)
        last = state.meta.last_team
        after = [t for t in teams if last is None or t > last]
        turn = after + [t for t in teams if t not in after]
        for team in turn:
            if team_cap is not None and team_running[team] >= team_cap:
                continue
            entry = next((e for e in queues[team] if admissible(e)), None)
            if entry is None:
                continue
            queues[team].remove(entry)
            if entry.max is not None:
                slot_queues[entry.slot].pop(0)
                slot_running[entry.slot] += 1
            team_running[team] += 1
            state.entries[entry.execution_id] = entry.model_copy(update={"running": True})
            state.meta = state.meta.model_copy(update={"last_team": team})
            admitted.append(entry.execution_id)
            progressed = True
    return admitted


def step(
    state: GateState, requests: Iterable[GateRequest], team_cap: int | None
) -> tuple[GateState, list[str]]:
    """The state after ``requests`` and the admissions they allow; ``state`` is left as it was."""
    new = state.copy()
    for request in requests:
        apply(new, request)
    return new, admit(new, team_cap)


def changed_keys(before: GateState, after: GateState) -> tuple[list[str], bool]:
    """The execution ids whose entries differ (added, changed or removed), and whether the
    counters changed: what a step must write to the gate's changelog."""
    keys = before.entries.keys() | after.entries.keys()
    ids = [k for k in keys if before.entries.get(k) is not after.entries.get(k)]
    return sorted(ids), before.meta != after.meta
