"""The concurrency gate's pure logic (``core/gate.py``, ADR 0030): examples, then properties over
random sequences of enqueues and releases.

Properties, checked after every step:

- no slot ever holds more than its ``max`` admitted runs, no team more than the cap;
- runs of one slot are admitted in arrival order (FIFO per key);
- the gate is work-conserving: after a step no queued run could be admitted;
- teams take turns: while a team still gets admissions in a step, no other team is more than one
  admission ahead of it in that step (round robin);
- the changelog a step writes (its changed keys) folds back into exactly the state, indexes and
  all (what a new owner reads after a kill -9);
- releasing the admitted runs again and again admits every queued run exactly once.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.gate import (
    GateEntry,
    GateMeta,
    GateRequest,
    GateRequestKind,
    GateState,
    advance,
    step,
)

T = datetime(2026, 1, 1, tzinfo=UTC)


def enqueue(execution_id: str, team: str = "", slot: str = "wf", max_: int | None = 1) -> GateRequest:
    return GateRequest(
        kind=GateRequestKind.ENQUEUE,
        execution_id=execution_id,
        team=team,
        slot=slot,
        max=max_,
        requested_at=T,
    )


def release(execution_id: str) -> GateRequest:
    return GateRequest(kind=GateRequestKind.RELEASE, execution_id=execution_id, requested_at=T)


# ---------------------------------------------------------------------------------------- examples


def test_a_limit_of_two_admits_two_and_queues_the_rest_in_order() -> None:
    state, admitted = step(GateState(), [enqueue(f"r{i}", max_=2) for i in range(5)], None)
    assert admitted == ["r0", "r1"]
    assert [e.execution_id for e in state.queued()] == ["r2", "r3", "r4"]
    state, admitted = step(state, [release("r1")], None)
    assert admitted == ["r2"]
    state, admitted = step(state, [release("r0"), release("r2")], None)
    assert admitted == ["r3", "r4"]
    assert not state.queued()


def test_keys_have_slots_of_their_own() -> None:
    requests = [enqueue("a1", slot="wf/a"), enqueue("a2", slot="wf/a"), enqueue("b1", slot="wf/b")]
    state, admitted = step(GateState(), requests, None)
    assert admitted == ["a1", "b1"]
    _, admitted = step(state, [release("b1")], None)
    assert admitted == []  # b's slot freed, but only a2 waits, behind a1


def test_a_key_whose_runs_all_ended_leaves_no_count_behind() -> None:
    """A slot per concurrency-key value (an order id): a million orders must not leave a million
    counts at zero in the gate's memory."""
    state = GateState()
    for i in range(1000):
        state, admitted = step(state, [enqueue(f"r{i}", team=f"t{i % 7}", slot=f"wf/order-{i}")], None)
        assert admitted == [f"r{i}"]
        state, _ = step(state, [release(f"r{i}")], None)
    assert not state.entries
    assert dict(state.slot_running) == {} and dict(state.team_running) == {}


def test_releasing_a_queued_run_takes_it_out_of_the_queue() -> None:
    state, _ = step(GateState(), [enqueue("r0"), enqueue("r1"), enqueue("r2")], None)
    state, admitted = step(state, [release("r1")], None)
    assert admitted == []
    state, admitted = step(state, [release("r0")], None)
    assert admitted == ["r2"]
    assert set(state.entries) == {"r2"}


def test_a_repeated_enqueue_and_an_unknown_release_change_nothing() -> None:
    state, _ = step(GateState(), [enqueue("r0"), enqueue("r1")], None)
    again, admitted = step(state, [enqueue("r0"), enqueue("r1"), release("nobody")], None)
    assert admitted == []
    assert again.entries == state.entries
    assert again.meta == state.meta


def test_the_team_cap_holds_runs_without_a_workflow_limit() -> None:
    requests = [enqueue(f"a{i}", team="a", slot="", max_=None) for i in range(4)]
    state, admitted = step(GateState(), requests, 2)
    assert admitted == ["a0", "a1"]
    _, admitted = step(state, [release("a0")], 2)
    assert admitted == ["a2"]


def test_teams_take_turns_when_slots_free_together() -> None:
    flood = [enqueue(f"a{i}", team="a", slot="", max_=None) for i in range(6)]
    few = [enqueue(f"b{i}", team="b", slot="", max_=None) for i in range(2)]
    _, admitted = step(GateState(), [*flood, *few], None)
    assert admitted == ["a0", "b0", "a1", "b1", "a2", "a3", "a4", "a5"]


def test_round_robin_goes_on_after_the_team_admitted_last() -> None:
    requests = [enqueue(f"{t}{i}", team=t, slot=f"wf-{t}", max_=1) for t in "abc" for i in range(3)]
    state, admitted = step(GateState(), requests, None)
    assert admitted == ["a0", "b0", "c0"]
    assert state.meta.last_team == "c"
    state, admitted = step(state, [release("a0")], None)
    assert admitted == ["a1"]
    # a, b and c each free a slot in one batch: a went last, so b goes first, and a last
    state, admitted = step(state, [release("a1"), release("b0"), release("c0")], None)
    assert admitted == ["b1", "c1", "a2"]


def test_the_step_leaves_its_input_state_alone() -> None:
    state, _ = step(GateState(), [enqueue("r0"), enqueue("r1")], None)
    before = dict(state.entries)
    step(state, [release("r0")], None)
    assert state.entries == before


# -------------------------------------------------------------------------------------- properties

WORKFLOWS = {"w1": ("a", 1), "w2": ("a", 2), "w3": ("b", None), "w4": ("c", 3), "w5": ("b", 1)}
"""workflow -> (its team, its max); a workflow's team is fixed, as a slot belongs to a workflow."""

enqueue_op = st.tuples(st.just("enqueue"), st.sampled_from(sorted(WORKFLOWS)), st.sampled_from(["k1", "k2"]))
release_op = st.tuples(st.just("release"), st.integers(0, 10_000), st.booleans())
batches = st.lists(
    st.lists(st.one_of(enqueue_op, enqueue_op, release_op), min_size=1, max_size=4), max_size=25
)


def admissible(state: GateState, cap: int | None) -> list[str]:
    """A naive statement of the admission rule: the queued runs that could start now."""
    running = state.running()
    out = []
    for e in state.queued():
        if cap is not None and sum(r.team == e.team for r in running) >= cap:
            continue
        if e.max is not None:
            head = min((q for q in state.queued() if q.slot == e.slot), key=lambda q: q.seq)
            if head is not e or sum(r.slot == e.slot for r in running) >= e.max:
                continue
        out.append(e.execution_id)
    return out


def fold(log: dict[str, GateEntry | GateMeta | None]) -> GateState:
    """The state a new owner builds from the changelog."""
    meta = next((v for v in log.values() if isinstance(v, GateMeta)), GateMeta())
    return GateState.of([v for v in log.values() if isinstance(v, GateEntry)], meta)


class Model:
    """Drives the gate through batches and checks every property after each step."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.state = GateState()
        self.log: dict[str, GateEntry | GateMeta | None] = {}
        self.created = 0
        self.admitted: Counter[str] = Counter()
        self.slot_order: dict[str, list[int]] = {}

    def run(self, requests: list[GateRequest]) -> list[str]:
        before = self.state.copy()
        after = self.state  # advanced in place, as the gate's processor does
        change = advance(after, requests, self.cap)
        every = {
            k
            for k in before.entries.keys() | after.entries.keys()
            if before.entries.get(k) != after.entries.get(k)
        }
        assert every <= set(change.changed), "a changed entry would be missing from the changelog"
        for i in change.changed:
            self.log[i] = after.entries.get(i)
        if change.meta_changed:
            self.log["meta"] = after.meta
        assert change.meta_changed == (before.meta != after.meta)
        self.check(change.admitted)
        return change.admitted

    def check(self, admitted: list[str]) -> None:
        state = self.state
        running = state.running()
        for slot, count in Counter(e.slot for e in running if e.max is not None).items():
            limit = next(e.max for e in running if e.slot == slot)
            assert limit is not None
            assert count <= limit, f"slot {slot}: {count} running over its max {limit}"
        if self.cap is not None:
            assert all(n <= self.cap for n in Counter(e.team for e in running).values())
        for execution_id in admitted:
            self.admitted[execution_id] += 1
            assert self.admitted[execution_id] == 1, f"{execution_id} admitted twice"
            entry = state.entries[execution_id]
            assert entry.running
            order = self.slot_order.setdefault(entry.slot, [])
            if entry.max is not None:
                assert not order or order[-1] < entry.seq, f"slot {entry.slot} admitted out of order"
                order.append(entry.seq)
        assert admissible(state, self.cap) == [], "a queued run could start but was left waiting"
        teams = [state.entries[i].team for i in admitted]
        for x in set(teams):
            last = max(i for i, t in enumerate(teams) if t == x)
            for i in range(last + 1):
                ahead = Counter(teams[:i])
                assert all(n <= ahead[x] + 1 for n in ahead.values()), f"team {x} skipped its turn: {teams}"
        restored = fold(self.log)
        assert restored.entries == state.entries
        assert restored.meta == state.meta
        # the indexes a restored state builds agree with those kept step by step
        assert {k: list(v) for k, v in restored.lines.items()} == {k: list(v) for k, v in state.lines.items()}
        assert {t: ls for t, ls in restored.team_lines.items() if ls} == state.team_lines
        # exactly (a dict compares keys at zero too): no count is left behind at zero
        assert dict(restored.slot_running) == dict(state.slot_running)
        assert dict(restored.team_running) == dict(state.team_running)


@settings(max_examples=300, deadline=None)
@given(batches, st.sampled_from([None, 1, 2]))
def test_limits_order_turns_and_recovery_hold_for_any_sequence(
    ops: list[list[tuple[str, object, object]]], cap: int | None
) -> None:
    m = Model(cap)
    for batch in ops:
        requests = []
        for op in batch:
            if op[0] == "enqueue":
                workflow, key = str(op[1]), str(op[2])
                team, max_ = WORKFLOWS[workflow]
                slot = f"{workflow}/{key}" if max_ is not None else ""
                requests.append(enqueue(f"r{m.created}", team, slot, max_))
                m.created += 1
            elif m.state.entries:
                held = sorted(m.state.entries)
                running = sorted(e.execution_id for e in m.state.running())
                pool = running if op[2] and running else held
                requests.append(release(pool[int(str(op[1])) % len(pool)]))
        m.run(requests)
    # liveness: ending the admitted runs, again and again, admits every queued run exactly once
    for _ in range(m.created + 1):
        if not m.state.entries:
            break
        m.run([release(e.execution_id) for e in m.state.running()])
    assert not m.state.entries
    assert all(n == 1 for n in m.admitted.values())
