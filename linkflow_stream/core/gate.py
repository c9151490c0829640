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


def _line(entry: GateEntry) -> str:
    """The FIFO line a queued run waits in: its slot's (per team), or its team's when unlimited."""
    return f"slot:{entry.team}:{entry.slot}" if entry.max is not None else f"team:{entry.team}"


@dataclass
class GateState:
    """Every run the gate holds, with indexes kept up to date by ``apply`` and ``admit`` so that a
    step costs what it changes, not what is queued."""

    entries: dict[str, GateEntry] = field(default_factory=dict)
    meta: GateMeta = field(default_factory=GateMeta)
    lines: dict[str, dict[str, None]] = field(default_factory=dict)
    """Queued run ids per line, in arrival order (a dict as an ordered set)."""
    team_lines: dict[str, set[str]] = field(default_factory=dict)
    """The lines of each team that hold queued runs."""
    slot_running: Counter[str] = field(default_factory=Counter)
    team_running: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, entries: Iterable[GateEntry], meta: GateMeta) -> GateState:
        """The state holding ``entries`` (as read back from the changelog)."""
        state = cls(meta=meta)
        for entry in sorted(entries, key=lambda e: e.seq):
            state.hold(entry)
        return state

    def hold(self, entry: GateEntry) -> None:
        """Take ``entry`` in (after any earlier entry of its line); indexes follow."""
        self.entries[entry.execution_id] = entry
        if entry.running:
            self.team_running[entry.team] += 1
            if entry.max is not None:
                self.slot_running[entry.slot] += 1
        else:
            line = _line(entry)
            self.lines.setdefault(line, {})[entry.execution_id] = None
            self.team_lines.setdefault(entry.team, set()).add(line)

    def unqueue(self, entry: GateEntry) -> None:
        line = _line(entry)
        queue = self.lines[line]
        del queue[entry.execution_id]
        if not queue:
            del self.lines[line]
            self.team_lines[entry.team].discard(line)
            if not self.team_lines[entry.team]:
                del self.team_lines[entry.team]

    def forget(self, entry: GateEntry) -> None:
        """Let ``entry`` go, queued or admitted; indexes follow."""
        del self.entries[entry.execution_id]
        if entry.running:
            _decrement(self.team_running, entry.team)
            if entry.max is not None:
                _decrement(self.slot_running, entry.slot)
        else:
            self.unqueue(entry)

    def copy(self) -> GateState:
        return GateState(
            dict(self.entries),
            self.meta,
            {k: dict(v) for k, v in self.lines.items()},
            {k: set(v) for k, v in self.team_lines.items()},
            Counter(self.slot_running),
            Counter(self.team_running),
        )

    def running_count(self) -> int:
        return sum(self.team_running.values())

    def running(self) -> list[GateEntry]:
        return [e for e in self.entries.values() if e.running]

    def queued(self) -> list[GateEntry]:
        return sorted((e for e in self.entries.values() if not e.running), key=lambda e: e.seq)


def _decrement(counts: Counter[str], key: str) -> None:
    """One less under ``key``, and no key at zero: a slot is a workflow and a concurrency-key
    value (an order id, a customer), so keys left at zero would pile up by the million."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def apply(state: GateState, request: GateRequest) -> None:
    """Fold one request into ``state`` (in place). A repeated enqueue and the release of a run the
    gate does not hold change nothing."""
    held = state.entries.get(request.execution_id)
    if request.kind is GateRequestKind.ENQUEUE:
        if held is not None:
            return
        entry = GateEntry(
            execution_id=request.execution_id,
            team=request.team,
            slot=request.slot,
            max=request.max,
            seq=state.meta.next_seq,
        )
        state.hold(entry)
        state.meta = state.meta.model_copy(update={"next_seq": state.meta.next_seq + 1})
    elif held is not None:
        state.forget(held)


def _candidate(state: GateState, team: str) -> GateEntry | None:
    """The team's earliest queued run that may start now: only the head of each of its lines can."""
    best: GateEntry | None = None
    for line in state.team_lines.get(team, ()):
        head = state.entries[next(iter(state.lines[line]))]
        if head.max is not None and state.slot_running[head.slot] >= head.max:
            continue
        if best is None or head.seq < best.seq:
            best = head
    return best


def admit(state: GateState, team_cap: int | None) -> list[str]:
    """Admit (in place) every run that may start now; their ids in admission order."""
    admitted: list[str] = []
    progressed = True
    while progressed:
        progressed = False
        teams = sorted(state.team_lines)
        last = state.meta.last_team
        after = [t for t in teams if last is None or t > last]
        for team in after + [t for t in teams if t not in after]:
            if team_cap is not None and state.team_running[team] >= team_cap:
                continue
            entry = _candidate(state, team)
            if entry is None:
                continue
            state.forget(entry)
            state.hold(entry.model_copy(update={"running": True}))
            state.meta = state.meta.model_copy(update={"last_team": team})
            admitted.append(entry.execution_id)
            progressed = True
    return admitted


def advance(state: GateState, requests: Iterable[GateRequest], team_cap: int | None) -> Advance:
    """Fold ``requests`` into ``state`` in place and admit what may start: the admitted ids, and the
    ids whose entries changed (what the changelog must get). Costs what it changes, whatever is
    queued; ``step`` is the same on a copy."""
    requests = list(requests)
    before = {r.execution_id: state.entries.get(r.execution_id) for r in requests}
    meta = state.meta
    for request in requests:
        apply(state, request)
    admitted = admit(state, team_cap)
    changed = {i for i, old in before.items() if old is not state.entries.get(i)} | set(admitted)
    return Advance(admitted, sorted(changed), meta != state.meta)


@dataclass(frozen=True)
class Advance:
    admitted: list[str]
    """In the order their ``admit`` commands go out."""
    changed: list[str]
    """Execution ids whose entry was added, changed or removed."""
    meta_changed: bool


def step(
    state: GateState, requests: Iterable[GateRequest], team_cap: int | None
) -> tuple[GateState, list[str]]:
    """The state after ``requests`` and the admissions they allow; ``state`` is left as it was."""
    new = state.copy()
    return new, advance(new, requests, team_cap).admitted
