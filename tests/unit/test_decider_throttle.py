"""The decider and a node's rate limit: a throttled attempt parks on a durable timer and is
dispatched again, as the same attempt, when it fires. It never fails for it and never spends an
attempt of its retry policy."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.events import EventType
from linkflow_stream.core.messages import NodeError, NodeResult
from linkflow_stream.core.state import ExecutionStatus, NodeStatus, TimerKind
from linkflow_stream.core.workflow import RetryPolicy
from tests.unit.conftest import CONFIG, HTTP_TIMEOUT, LEASE_GRACE, Factories, Run, at

E = EventType


def throttled(node_id: str, attempt: int, until: datetime, execution_id: str = "e1") -> NodeResult:
    return NodeResult(
        execution_id=execution_id,
        node_id=node_id,
        attempt=attempt,
        ok=False,
        error=NodeError(error_class="throttled", message="rate limit 2/s, burst 1: no token", retryable=True),
        started_at=until,
        finished_at=until,
        throttled_until=until,
    )


def started(lf: Factories, retry: RetryPolicy | None = None) -> Run:
    return lf.run(lf.workflow(lf.node("h", "http", retry=retry)))


def test_a_throttled_attempt_parks_on_a_throttle_timer_instead_of_its_lease(lf: Factories) -> None:
    run = started(lf)
    events = run.feed(throttled("h", 1, at(2.5)), at(1))
    assert [(e.type, e.node_id, e.attempt, e.due_at) for e in events] == [(E.NODE_THROTTLED, "h", 1, at(2.5))]
    assert "no token" in (events[0].reason or "")
    node = run.s.nodes["h"]
    assert (node.status, node.attempts, node.error) == (NodeStatus.RUNNING, 1, None)
    assert set(run.s.timers) == {lf.timer_id(TimerKind.THROTTLE, "h", 1)}  # no lease: nothing is out
    assert run.s.timers[lf.timer_id(TimerKind.THROTTLE, "h", 1)].due_at == at(2.5)


def test_the_throttle_timer_dispatches_the_same_attempt_again(lf: Factories) -> None:
    run = started(lf)
    run.feed(throttled("h", 1, at(2.5)), at(1))
    timer = lf.timer_id(TimerKind.THROTTLE, "h", 1)
    assert run.feed(lf.fire(timer, due_at=at(2.5)), at(2.4)) == []  # early: it fires again
    events = run.feed(lf.fire(timer, due_at=at(2.5)), at(2.5))
    assert [(e.type, e.attempt, e.reason) for e in events] == [
        (E.NODE_STARTED, 1, "rate limit wait over; dispatched again")
    ]
    assert events[0].due_at == at(2.5 + HTTP_TIMEOUT + LEASE_GRACE)
    assert set(run.s.timers) == {lf.timer_id(TimerKind.LEASE, "h", 1)}
    assert run.feed(lf.fire(timer, due_at=at(2.5)), at(3)) == []  # a repeated firing is stale
    done = run.feed(lf.ok("h", 1, {"status": 200}), at(4))
    assert [e.type for e in done] == [E.NODE_SUCCEEDED, E.EXECUTION_SUCCEEDED]


def test_a_come_back_time_already_past_is_now(lf: Factories) -> None:
    run = started(lf)
    events = run.feed(throttled("h", 1, at(0.5)), at(1))
    assert events[0].due_at == at(1)


def test_results_for_a_parked_attempt_change_nothing(lf: Factories) -> None:
    run = started(lf)
    run.feed(throttled("h", 1, at(3)), at(1))
    assert run.feed(throttled("h", 1, at(3)), at(1.5)) == []  # a redelivered copy
    assert run.feed(lf.ok("h", 1), at(1.5)) == []  # nothing of this attempt is out
    assert run.feed(lf.fail("h", 1, retryable=True), at(1.5)) == []
    assert run.feed(throttled("h", 2, at(3)), at(1.5)) == []  # not the current attempt


def test_throttling_spends_no_attempt_of_the_retry_policy(lf: Factories) -> None:
    run = started(lf, RetryPolicy(max_attempts=2, initial_delay_seconds=1))
    for i in range(5):  # throttled five times over
        run.feed(throttled("h", 1, at(i + 1)), at(i + 0.5))
        run.feed(lf.fire(lf.timer_id(TimerKind.THROTTLE, "h", 1)), at(i + 1))
    assert run.s.nodes["h"].attempts == 1
    events = run.feed(lf.fail("h", 1, retryable=True), at(10))
    assert [(e.type, e.attempt) for e in events] == [(E.NODE_RETRY_SCHEDULED, 1)]  # still a retry left


def test_a_run_cancelled_while_throttled_ends_with_no_timer_left(lf: Factories) -> None:
    run = started(lf)
    run.feed(throttled("h", 1, at(30)), at(1))
    events = run.feed(lf.cancel("stop"), at(2))
    assert [e.type for e in events] == [E.NODE_CANCELLED, E.EXECUTION_CANCELLED]
    assert run.s.timers == {}


def test_a_throttled_result_with_ok_true_is_a_success(lf: Factories) -> None:
    """``throttled_until`` counts only on a result that did not run (``ok`` false)."""
    run = started(lf)
    done = run.feed(throttled("h", 1, at(3)).model_copy(update={"ok": True, "error": None}), at(1))
    assert [e.type for e in done] == [E.NODE_SUCCEEDED, E.EXECUTION_SUCCEEDED]


# ------------------------------------------------------------------------------- properties

ACTIONS = st.lists(
    st.sampled_from(["throttle", "throttle_stale", "fire", "fail", "fail_hard", "ok", "lease"]),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(max_attempts=st.integers(1, 4), actions=ACTIONS, waits=st.lists(st.integers(0, 5000), min_size=40))
def test_a_throttled_node_never_fails_for_it_nor_exceeds_its_attempts(
    lf: Factories, max_attempts: int, actions: list[str], waits: list[int]
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, initial_delay_seconds=1, multiplier=1)
    run = started(lf, policy)
    now = at(0)
    throttles = failures = 0
    for action, wait_ms in zip(actions, waits, strict=False):
        state = run.s
        if state.status.terminal:
            break
        node = state.nodes["h"]
        timer = next(iter(state.timers.values()), None) if state.timers else None
        now += timedelta(milliseconds=1)
        before = node.attempts
        if action == "throttle":
            events = run.feed(throttled("h", node.attempts, now + timedelta(milliseconds=wait_ms)), now)
            throttles += any(e.type is E.NODE_THROTTLED for e in events)
        elif action == "throttle_stale":
            events = run.feed(throttled("h", node.attempts + 1, now), now)
            assert events == []
        elif action in ("fire", "lease") and timer is not None:
            kinds = {TimerKind.THROTTLE, TimerKind.RETRY} if action == "fire" else {TimerKind.LEASE}
            timers = [t for t in state.timers.values() if t.kind in kinds]
            if not timers:
                continue
            now = max(now, timers[0].due_at)
            events = run.feed(lf.fire(timers[0].id, due_at=timers[0].due_at), now)
            if timers[0].kind is TimerKind.THROTTLE:
                assert [(e.type, e.attempt) for e in events] == [(E.NODE_STARTED, before)]
        elif action in ("fail", "fail_hard"):
            events = run.feed(lf.fail("h", node.attempts, retryable=action == "fail"), now)
            failures += bool(events)
        elif action == "ok":
            events = run.feed(lf.ok("h", node.attempts), now)
        else:
            continue
        for e in events:
            if e.type is E.NODE_FAILED:
                assert e.error is not None
                assert e.error.error_class != "throttled", "a node failed for its rate limit"
            if e.type is E.NODE_THROTTLED:
                assert e.attempt == before
        assert run.s.nodes["h"].attempts <= max_attempts + CONFIG.max_lease_attempts
    s = run.s
    # only real failures spend attempts: throttling alone never moves the attempt on
    assert s.nodes["h"].attempts <= 1 + failures + CONFIG.max_lease_attempts
    if failures == 0 and not any(a == "lease" for a in actions):
        assert s.nodes["h"].attempts == 1
        assert s.status is not ExecutionStatus.FAILED
    if throttles:
        assert any(e.type is E.NODE_THROTTLED for e in run.log)


def test_a_throttled_copy_of_an_earlier_dispatch_does_not_park_the_one_now_out(lf: Factories) -> None:
    """The first dispatch came back throttled, the same attempt went out again; then a redelivered
    copy of the first task comes back throttled too. It names the first dispatch's lease, so the
    second dispatch stays out and its result counts (no third dispatch, no second call)."""
    run = started(lf)
    first_lease = run.s.timers[lf.timer_id(TimerKind.LEASE, "h", 1)].due_at
    run.feed(throttled("h", 1, at(2.5)).model_copy(update={"lease_until": first_lease}), at(1))
    run.feed(lf.fire(lf.timer_id(TimerKind.THROTTLE, "h", 1), due_at=at(2.5)), at(2.5))
    second_lease = run.s.timers[lf.timer_id(TimerKind.LEASE, "h", 1)].due_at
    assert second_lease != first_lease
    stale = throttled("h", 1, at(4)).model_copy(update={"lease_until": first_lease})
    assert run.feed(stale, at(3)) == []
    current = throttled("h", 1, at(5)).model_copy(update={"lease_until": second_lease})
    assert [e.type for e in run.feed(current, at(3.5))] == [E.NODE_THROTTLED]
