"""The pure decider: ``decide(state, input, now, config)`` and the ``evolve``/``apply`` fold."""

from __future__ import annotations

import pytest

from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import (
    EvolveError,
    ExecutionStatus,
    NodeStatus,
    TimerKind,
    apply,
    evolve,
)
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.settings import Settings

E = EventType


def types(events: list[ExecutionEvent]) -> list[tuple[EventType, str | None]]:
    return [(e.type, e.node_id) for e in events]


def node_statuses(run) -> dict[str, NodeStatus]:
    return {k: v.status for k, v in run.s.nodes.items()}


# --------------------------------------------------------------------------------------- start


def test_start_emits_created_started_and_every_root(lf) -> None:
    wf = lf.workflow(lf.node("a"), lf.node("b", "http"), lf.node("c", depends_on=["a"]))
    run = lf.run()
    events = run.feed(lf.start(wf, input_={"k": "v"}, priority=Priority.HIGH), lf.at())

    assert types(events) == [
        (E.EXECUTION_CREATED, None),
        (E.EXECUTION_STARTED, None),
        (E.NODE_STARTED, "a"),
        (E.NODE_STARTED, "b"),
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert all(e.execution_id == "e1" and e.at == lf.at() for e in events)
    created, started, start_a, start_b = events
    assert created.workflow == wf
    assert created.input == {"k": "v"}
    assert created.priority is Priority.HIGH
    assert started.due_at is None  # no workflow timeout, no execution deadline
    assert (start_a.attempt, start_a.dispatch, start_a.due_at) == (1, Dispatch.INLINE, None)
    assert (start_b.attempt, start_b.dispatch) == (1, Dispatch.TASK)
    assert start_b.due_at == lf.at(lf.HTTP_TIMEOUT + lf.LEASE_GRACE)

    s = run.s
    assert s.status is ExecutionStatus.RUNNING
    assert s.seq == 4
    assert s.priority is Priority.HIGH
    assert s.started_at == lf.at()
    assert node_statuses(run) == {"a": NodeStatus.RUNNING, "b": NodeStatus.RUNNING, "c": NodeStatus.PENDING}
    assert set(s.timers) == {lf.timer_id(TimerKind.LEASE, "b", 1)}  # inline nodes hold no timer
    assert [(t.from_status, t.to_status) for t in s.history] == [
        (None, ExecutionStatus.PENDING),
        (ExecutionStatus.PENDING, ExecutionStatus.RUNNING),
    ]


def test_duplicate_start_yields_nothing(lf) -> None:
    wf = lf.workflow(lf.node("a"))
    run = lf.run(wf)
    before = run.state
    assert decide(run.state, lf.start(wf), lf.at(1), lf.config) == []
    assert run.feed(lf.start(wf), lf.at(1)) == []
    assert run.state == before


def test_start_after_the_end_yields_nothing(lf) -> None:
    wf = lf.workflow(lf.node("a"))
    run = lf.run(wf)
    run.feed(lf.ok("a"), lf.at(1))
    assert run.s.status is ExecutionStatus.SUCCESS
    assert run.feed(lf.start(wf), lf.at(2)) == []


def test_node_timeout_overrides_the_type_default_lease(lf) -> None:
    wf = lf.workflow(lf.node("h", "http", timeout_seconds=7))
    run = lf.run(wf, now=lf.at(100))
    (started,) = [e for e in run.log if e.type is E.NODE_STARTED]
    assert started.due_at == lf.at(100 + 7 + lf.LEASE_GRACE)
    timer = run.s.timers[lf.timer_id(TimerKind.LEASE, "h", 1)]
    assert (timer.kind, timer.due_at, timer.node_id, timer.attempt) == (TimerKind.LEASE, lf.at(112), "h", 1)


def test_unknown_node_type_is_dispatched_as_a_task(lf) -> None:
    wf = lf.workflow(lf.node("q", "transform"))
    run = lf.run(wf, config=DeciderConfig(kinds={}))
    (started,) = [e for e in run.log if e.type is E.NODE_STARTED]
    assert started.dispatch is Dispatch.TASK
    assert started.due_at == lf.at(30 + 5)


def test_workflow_timeout_sets_the_execution_deadline(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a"), timeout_seconds=60), now=lf.at(10))
    started = run.log[1]
    assert started.type is E.EXECUTION_STARTED
    assert started.due_at == lf.at(70)
    timer = run.s.timers[lf.timer_id(TimerKind.EXECUTION_TIMEOUT)]
    assert (timer.kind, timer.due_at, timer.node_id) == (TimerKind.EXECUTION_TIMEOUT, lf.at(70), None)


def test_registry_config_matches_the_dispatch_the_unit_tests_assume() -> None:
    settings = Settings()
    cfg = decider_config(build_registry(settings), settings)
    assert {k: v.dispatch for k, v in cfg.kinds.items()} == {
        "transform": Dispatch.INLINE,
        "condition": Dispatch.INLINE,
        "wait": Dispatch.TIMER,
        "http": Dispatch.TASK,
        "db": Dispatch.TASK,
        "code": Dispatch.TASK,
        "workflow": Dispatch.CHILD,
    }
    assert cfg.lease_grace_seconds == settings.lease_grace_seconds


def test_registry_config_takes_the_lease_grace_from_settings() -> None:
    settings = Settings(lease_grace_seconds=9.5)
    assert decider_config(build_registry(settings), settings).lease_grace_seconds == 9.5


def test_http_default_timeout_comes_from_settings() -> None:
    settings = Settings(http_timeout_seconds=60.0)
    cfg = decider_config(build_registry(settings), settings)
    assert cfg.kinds["http"].default_timeout_seconds == 60.0


# ------------------------------------------------------------------------------ fan-out / join


def test_fan_out_join_and_success(lf) -> None:
    wf = lf.workflow(lf.node("a"), lf.node("b", "http"), lf.node("j", depends_on=["a", "b"]))
    run = lf.run(wf)
    assert [e.node_id for e in run.log if e.type is E.NODE_STARTED] == ["a", "b"]

    assert types(run.feed(lf.ok("a", output={"v": 1}), lf.at(1))) == [(E.NODE_SUCCEEDED, "a")]
    assert run.s.nodes["j"].status is NodeStatus.PENDING  # still waits for b
    assert run.s.nodes["a"].output == {"v": 1}

    events = run.feed(lf.ok("b", output="B"), lf.at(2))
    assert types(events) == [(E.NODE_SUCCEEDED, "b"), (E.NODE_STARTED, "j")]
    assert events[0].output == "B"
    assert lf.timer_id(TimerKind.LEASE, "b", 1) not in run.s.timers  # the lease ends with the node

    events = run.feed(lf.ok("j", output=3), lf.at(3))
    assert types(events) == [(E.NODE_SUCCEEDED, "j"), (E.EXECUTION_SUCCEEDED, None)]
    s = run.s
    assert s.status is ExecutionStatus.SUCCESS
    assert s.finished_at == lf.at(3)
    assert s.timers == {}
    assert s.node_inputs() == {"input": {"x": 1}, "nodes": {"a": {"v": 1}, "b": "B", "j": 3}}
    assert [e.seq for e in run.log] == list(range(1, len(run.log) + 1))
    assert [t.to_status for t in s.history] == [
        ExecutionStatus.PENDING,
        ExecutionStatus.RUNNING,
        ExecutionStatus.SUCCESS,
    ]


def test_chain_starts_one_node_after_another(lf) -> None:
    wf = lf.workflow(lf.node("a"), lf.node("b", depends_on=["a"]), lf.node("c", depends_on=["b"]))
    run = lf.run(wf)
    assert types(run.feed(lf.ok("a"), lf.at(1))) == [(E.NODE_SUCCEEDED, "a"), (E.NODE_STARTED, "b")]
    assert types(run.feed(lf.ok("b"), lf.at(2))) == [(E.NODE_SUCCEEDED, "b"), (E.NODE_STARTED, "c")]
    assert run.s.nodes["c"].started_at == lf.at(2)


def test_node_listed_before_its_dependency_still_starts(lf) -> None:
    wf = lf.workflow(lf.node("late", depends_on=["early"]), lf.node("early"))
    run = lf.run(wf)
    assert node_statuses(run) == {"late": NodeStatus.PENDING, "early": NodeStatus.RUNNING}
    events = run.feed(lf.ok("early"), lf.at(1))
    assert types(events) == [(E.NODE_SUCCEEDED, "early"), (E.NODE_STARTED, "late")]


# --------------------------------------------------------------------------- condition routing


def branching_workflow(lf):
    return lf.workflow(
        lf.node("c", "condition"),
        lf.node("t", depends_on=["c:true"]),
        lf.node("f", depends_on=["c:false"]),
        lf.node("f2", depends_on=["f"]),  # transitively excluded with f
        lf.node("any", depends_on=["c"]),  # a plain dependency runs on either branch
        lf.node("m", depends_on=["t", "f"]),  # one path taken, one excluded: runs
    )


@pytest.mark.parametrize(
    ("outcome", "taken", "excluded"),
    [
        (True, "t", "f"),
        (False, "f", "t"),
    ],
)
def test_condition_routes_one_branch_and_skips_the_other(
    lf, outcome: bool, taken: str, excluded: str
) -> None:
    run = lf.run(branching_workflow(lf))
    events = run.feed(lf.ok("c", output=outcome), lf.at(1))
    started = {e.node_id for e in events if e.type is E.NODE_STARTED}
    skipped = {e.node_id for e in events if e.type is E.NODE_SKIPPED}
    assert started == {taken, "any"}
    assert excluded in skipped
    assert all(e.reason == "no dependency path was taken" for e in events if e.type is E.NODE_SKIPPED)
    if outcome:
        assert skipped == {"f", "f2"}  # the skip of f propagates to f2 in the same decision
    else:
        assert skipped == {"t"}  # f2 depends on f, which runs

    run.feed(lf.ok(taken), lf.at(2))
    assert run.s.nodes["m"].status is NodeStatus.RUNNING  # t or f succeeded, the other was skipped


def test_condition_true_runs_to_success_with_skipped_nodes(lf) -> None:
    run = lf.run(branching_workflow(lf))
    run.feed(lf.ok("c", output=True), lf.at(1))
    run.feed(lf.ok("t"), lf.at(2))
    run.feed(lf.ok("any"), lf.at(3))
    events = run.feed(lf.ok("m"), lf.at(4))
    assert types(events) == [(E.NODE_SUCCEEDED, "m"), (E.EXECUTION_SUCCEEDED, None)]
    assert node_statuses(run) == {
        "c": NodeStatus.SUCCESS,
        "t": NodeStatus.SUCCESS,
        "f": NodeStatus.SKIPPED,
        "f2": NodeStatus.SKIPPED,
        "any": NodeStatus.SUCCESS,
        "m": NodeStatus.SUCCESS,
    }


def test_every_path_excluded_skips_and_the_run_succeeds(lf) -> None:
    wf = lf.workflow(
        lf.node("c", "condition"),
        lf.node("t", depends_on=["c:true"]),
        lf.node("t2", depends_on=["t"]),
        lf.node("t3", depends_on=["t2", "c:true"]),
    )
    run = lf.run(wf)
    events = run.feed(lf.ok("c", output=False), lf.at(1))
    assert types(events) == [
        (E.NODE_SUCCEEDED, "c"),
        (E.NODE_SKIPPED, "t"),
        (E.NODE_SKIPPED, "t2"),
        (E.NODE_SKIPPED, "t3"),
        (E.EXECUTION_SUCCEEDED, None),
    ]
    assert run.s.status is ExecutionStatus.SUCCESS


def test_transitive_skip_reaches_a_node_listed_before_the_skipped_one(lf) -> None:
    wf = lf.workflow(
        lf.node("z", depends_on=["y"]),
        lf.node("y", depends_on=["c:true"]),
        lf.node("c", "condition"),
        lf.node("other"),
    )
    run = lf.run(wf)
    events = run.feed(lf.ok("c", output=False), lf.at(1))
    assert {e.node_id for e in events if e.type is E.NODE_SKIPPED} == {"y", "z"}
    assert run.s.status is ExecutionStatus.RUNNING  # "other" still runs


def test_join_waits_for_every_non_skipped_dependency(lf) -> None:
    wf = lf.workflow(
        lf.node("c", "condition"),
        lf.node("slow", "http"),
        lf.node("t", depends_on=["c:true"]),
        lf.node("j", depends_on=["t", "slow"]),
    )
    run = lf.run(wf)
    run.feed(lf.ok("c", output=False), lf.at(1))  # t is skipped
    assert run.s.nodes["t"].status is NodeStatus.SKIPPED
    assert run.s.nodes["j"].status is NodeStatus.PENDING  # slow is still running
    assert types(run.feed(lf.ok("slow"), lf.at(2))) == [(E.NODE_SUCCEEDED, "slow"), (E.NODE_STARTED, "j")]


# ------------------------------------------------------------------------------ stale results


def test_results_that_match_nothing_yield_nothing(lf) -> None:
    wf = lf.workflow(lf.node("a", "http"), lf.node("b", depends_on=["a"]))
    run = lf.run(wf)
    before = run.state
    assert run.feed(lf.ok("a", attempt=2), lf.at(1)) == []  # an attempt that never started
    assert run.feed(lf.ok("a", attempt=0), lf.at(1)) == []
    assert run.feed(lf.ok("ghost"), lf.at(1)) == []  # a node of no workflow
    assert run.feed(lf.ok("b"), lf.at(1)) == []  # a node still pending
    assert run.feed(lf.fail("b"), lf.at(1)) == []
    assert run.state == before
    assert types(run.feed(lf.ok("a"), lf.at(1))) == [(E.NODE_SUCCEEDED, "a"), (E.NODE_STARTED, "b")]
    after = run.state
    assert run.feed(lf.ok("a"), lf.at(2)) == []  # a duplicate
    assert run.feed(lf.fail("a"), lf.at(2)) == []  # a late failure of a finished attempt
    assert run.state == after


def test_result_for_a_stale_attempt_after_a_lease_expiry(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 1)), lf.at(40))
    assert run.s.nodes["h"].attempts == 2
    assert run.feed(lf.ok("h", attempt=1), lf.at(41)) == []
    assert run.feed(lf.fail("h", attempt=1), lf.at(41)) == []
    assert types(run.feed(lf.ok("h", attempt=2), lf.at(42))) == [
        (E.NODE_SUCCEEDED, "h"),
        (E.EXECUTION_SUCCEEDED, None),
    ]


def test_inputs_before_creation_yield_nothing(lf) -> None:
    assert decide(None, lf.ok("a"), lf.at(), lf.config) == []
    assert decide(None, lf.cancel(), lf.at(), lf.config) == []
    assert decide(None, lf.fire("execution_timeout"), lf.at(), lf.config) == []


def test_results_after_the_end_yield_nothing(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a"), lf.node("h", "http")))
    run.feed(lf.fail("a"), lf.at(1))
    assert run.s.status is ExecutionStatus.FAILED
    assert run.feed(lf.ok("h"), lf.at(2)) == []
    assert run.feed(lf.fail("h", retryable=True), lf.at(2)) == []
    assert run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 1)), lf.at(99)) == []


# --------------------------------------------------------------------------------------- wait


def test_wait_node_is_a_timer_that_succeeds_when_fired(lf) -> None:
    wf = lf.workflow(lf.node("w", "wait", config={"seconds": 1.5}), lf.node("after", depends_on=["w"]))
    run = lf.run(wf, now=lf.at(10))
    (started,) = [e for e in run.log if e.type is E.NODE_STARTED]
    assert (started.node_id, started.dispatch, started.attempt) == ("w", Dispatch.TIMER, 1)
    assert started.due_at == lf.at(11.5)
    wait_id = lf.timer_id(TimerKind.WAIT, "w", 1)
    assert wait_id == "wait:w:1"
    timer = run.s.timers[wait_id]
    assert (timer.kind, timer.due_at, timer.node_id, timer.attempt) == (TimerKind.WAIT, lf.at(11.5), "w", 1)

    events = run.feed(lf.fire(wait_id), lf.at(11.5))
    assert types(events) == [(E.NODE_SUCCEEDED, "w"), (E.NODE_STARTED, "after")]
    assert events[0].attempt == 1
    assert events[0].output == {"waited_seconds": 1.5}
    assert wait_id not in run.s.timers
    assert run.feed(lf.fire(wait_id), lf.at(12)) == []  # a timer fires once


def test_zero_second_wait_is_still_a_timer(lf) -> None:
    run = lf.run(lf.workflow(lf.node("w", "wait", config={"seconds": 0})), now=lf.at(5))
    assert run.s.timers[lf.timer_id(TimerKind.WAIT, "w", 1)].due_at == lf.at(5)
    assert run.s.nodes["w"].status is NodeStatus.RUNNING


@pytest.mark.parametrize(
    "timer_id",
    [
        "wait:w:2",
        "wait:x:1",
        "lease:w:1",
        "retry:w:1",
        "execution_timeout",
        "",
        "bogus",
        "wait:w",
    ],
)
def test_stale_or_unknown_timer_ids_yield_nothing(lf, timer_id: str) -> None:
    run = lf.run(lf.workflow(lf.node("w", "wait")))
    before = run.state
    assert run.feed(lf.fire(timer_id), lf.at(9)) == []
    assert run.state == before


def test_timer_fired_command_without_timer_id_yields_nothing(lf) -> None:
    run = lf.run(lf.workflow(lf.node("w", "wait")))
    cmd = lf.fire("x").model_copy(update={"timer_id": None})
    assert run.feed(cmd, lf.at(9)) == []


# -------------------------------------------------------------------------------------- leases


def test_lease_expiry_dispatches_the_node_again_as_a_new_attempt(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http", timeout_seconds=10)))
    events = run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 1)), lf.at(15))
    assert types(events) == [(E.NODE_STARTED, "h")]
    (again,) = events
    assert (again.attempt, again.dispatch) == (2, Dispatch.TASK)
    assert again.reason == "lease expired; dispatched again"
    assert again.due_at == lf.at(15 + 10 + lf.LEASE_GRACE)
    assert set(run.s.timers) == {lf.timer_id(TimerKind.LEASE, "h", 2)}
    node = run.s.nodes["h"]
    assert (node.status, node.attempts, node.started_at) == (NodeStatus.RUNNING, 2, lf.at())
    # the old lease is gone: firing it again does nothing
    assert run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 1)), lf.at(16)) == []


def test_lease_expiry_fails_the_node_after_max_lease_attempts(lf) -> None:
    cfg = DeciderConfig(kinds=lf.config.kinds, lease_grace_seconds=lf.LEASE_GRACE, max_lease_attempts=3)
    run = lf.run(
        lf.workflow(lf.node("h", "http"), lf.node("p", "http"), lf.node("after", depends_on=["h"])),
        config=cfg,
    )
    for attempt in (1, 2):
        events = run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", attempt)), lf.at(40 * attempt))
        assert [(e.type, e.attempt) for e in events] == [(E.NODE_STARTED, attempt + 1)]
    events = run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 3)), lf.at(120))
    assert types(events) == [
        (E.NODE_FAILED, "h"),
        (E.NODE_CANCELLED, "p"),
        (E.NODE_SKIPPED, "after"),
        (E.EXECUTION_FAILED, None),
    ]
    failed = events[0]
    assert failed.attempt == 3
    assert failed.error is not None
    assert failed.error.error_class == "lease_expired"
    assert failed.error.retryable is False
    assert run.s.status is ExecutionStatus.FAILED
    assert run.s.nodes["h"].error == failed.error
    assert run.s.timers == {}


def test_default_max_lease_attempts_is_five(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    for attempt in range(1, 5):
        run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", attempt)), lf.at(40 * attempt))
    assert run.s.nodes["h"].attempts == 5
    assert run.s.status is ExecutionStatus.RUNNING
    run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 5)), lf.at(400))
    assert run.s.status is ExecutionStatus.FAILED


# -------------------------------------------------------------------------------------- retries


def test_retryable_failure_schedules_a_retry_then_starts_attempt_two(lf) -> None:
    wf = lf.workflow(lf.node("h", "http", retry=lf.retry(max_attempts=3, initial=2, multiplier=3)))
    run = lf.run(wf)
    events = run.feed(lf.fail("h", 1, "http_5xx", retryable=True), lf.at(1))
    assert types(events) == [(E.NODE_RETRY_SCHEDULED, "h")]
    (scheduled,) = events
    assert scheduled.attempt == 1
    assert scheduled.due_at == lf.at(3)
    assert scheduled.error is not None
    assert scheduled.error.error_class == "http_5xx"
    node = run.s.nodes["h"]
    assert (node.status, node.attempts) == (NodeStatus.RUNNING, 1)
    assert node.error == scheduled.error
    retry_id = lf.timer_id(TimerKind.RETRY, "h", 1)
    assert set(run.s.timers) == {retry_id}  # the lease of attempt 1 is replaced by the retry timer

    # the failed attempt's result again (a redelivery) and its old lease change nothing
    assert run.feed(lf.fail("h", 1, "http_5xx", retryable=True), lf.at(2)) == []
    assert run.feed(lf.ok("h", 1), lf.at(2)) == []
    assert run.feed(lf.fire(lf.timer_id(TimerKind.LEASE, "h", 1)), lf.at(2)) == []

    events = run.feed(lf.fire(retry_id), lf.at(3))
    assert [(e.type, e.attempt, e.dispatch) for e in events] == [(E.NODE_STARTED, 2, Dispatch.TASK)]
    assert events[0].due_at == lf.at(3 + lf.HTTP_TIMEOUT + lf.LEASE_GRACE)
    assert set(run.s.timers) == {lf.timer_id(TimerKind.LEASE, "h", 2)}

    # second failure: backoff grows by the multiplier
    (second,) = run.feed(lf.fail("h", 2, "timeout", retryable=True), lf.at(4))
    assert (second.type, second.attempt, second.due_at) == (E.NODE_RETRY_SCHEDULED, 2, lf.at(4 + 6))
    run.feed(lf.fire(lf.timer_id(TimerKind.RETRY, "h", 2)), lf.at(10))
    assert run.s.nodes["h"].attempts == 3

    # the last allowed attempt fails: the node and the run fail
    events = run.feed(lf.fail("h", 3, "timeout", retryable=True), lf.at(11))
    assert types(events) == [(E.NODE_FAILED, "h"), (E.EXECUTION_FAILED, None)]
    assert events[-1].reason == "node h failed: h broke"


def test_retry_then_success(lf) -> None:
    wf = lf.workflow(lf.node("h", "http", retry=lf.retry()), lf.node("next", depends_on=["h"]))
    run = lf.run(wf)
    run.feed(lf.fail("h", 1, retryable=True), lf.at(1))
    run.feed(lf.fire(lf.timer_id(TimerKind.RETRY, "h", 1)), lf.at(3))
    events = run.feed(lf.ok("h", 2, output="fine"), lf.at(4))
    assert types(events) == [(E.NODE_SUCCEEDED, "h"), (E.NODE_STARTED, "next")]
    assert run.s.nodes["h"].output == "fine"


def test_retry_delay_is_capped_by_max_delay(lf) -> None:
    wf = lf.workflow(
        lf.node("h", "http", retry=lf.retry(max_attempts=10, initial=10, multiplier=10, max_delay=25))
    )
    run = lf.run(wf)
    run.feed(lf.fail("h", 1, retryable=True), lf.at(1))
    assert run.log[-1].due_at == lf.at(11)
    run.feed(lf.fire(lf.timer_id(TimerKind.RETRY, "h", 1)), lf.at(11))
    run.feed(lf.fail("h", 2, retryable=True), lf.at(12))
    assert run.log[-1].due_at == lf.at(12 + 25)


@pytest.mark.parametrize(
    ("retry", "retryable"),
    [
        (None, True),  # retryable, but the node has no policy
        (True, False),  # a policy, but the error is not retryable
    ],
)
def test_failure_without_a_retry_fails_the_run(lf, retry: bool | None, retryable: bool) -> None:
    wf = lf.workflow(lf.node("h", "http", retry=lf.retry() if retry else None))
    run = lf.run(wf)
    events = run.feed(lf.fail("h", 1, retryable=retryable), lf.at(1))
    assert types(events) == [(E.NODE_FAILED, "h"), (E.EXECUTION_FAILED, None)]


def test_non_retryable_failure_cancels_running_and_skips_pending(lf) -> None:
    wf = lf.workflow(
        lf.node("a", "http"),
        lf.node("b", "http"),
        lf.node("w", "wait"),
        lf.node("c", depends_on=["a"]),
        lf.node("d", depends_on=["c", "b"]),
        timeout_seconds=300,
    )
    run = lf.run(wf)
    events = run.feed(lf.fail("a", 1, "http_4xx"), lf.at(2))
    assert types(events) == [
        (E.NODE_FAILED, "a"),
        (E.NODE_CANCELLED, "b"),
        (E.NODE_CANCELLED, "w"),
        (E.NODE_SKIPPED, "c"),
        (E.NODE_SKIPPED, "d"),
        (E.EXECUTION_FAILED, None),
    ]
    assert all(e.reason == "node a failed: a broke" for e in events[1:])
    assert events[0].error is not None
    assert events[0].error.error_class == "http_4xx"
    s = run.s
    assert s.status is ExecutionStatus.FAILED
    assert s.finished_at == lf.at(2)
    assert s.timers == {}  # no lease, wait or execution deadline survives the end
    assert s.nodes["a"].error == events[0].error
    assert s.history[-1].to_status is ExecutionStatus.FAILED
    assert s.history[-1].reason == "node a failed: a broke"


def test_failure_without_an_error_record_is_classified_unknown(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    events = run.feed(lf.fail("a", with_error=False), lf.at(1))
    assert events[0].type is E.NODE_FAILED
    assert events[0].error is not None
    assert events[0].error.error_class == "unknown"
    assert run.s.status is ExecutionStatus.FAILED


# -------------------------------------------------------------------------------------- cancel


def test_cancel_cancels_pending_and_running_nodes(lf) -> None:
    wf = lf.workflow(
        lf.node("a"),
        lf.node("h", "http"),
        lf.node("b", depends_on=["a"]),
        lf.node("c", depends_on=["h"]),
        timeout_seconds=60,
    )
    run = lf.run(wf)
    run.feed(lf.ok("a"), lf.at(1))  # a done, b running, h running, c pending
    events = run.feed(lf.cancel("user asked"), lf.at(2))
    assert types(events) == [
        (E.NODE_CANCELLED, "h"),
        (E.NODE_CANCELLED, "b"),
        (E.NODE_CANCELLED, "c"),
        (E.EXECUTION_CANCELLED, None),
    ]
    assert all(e.reason == "user asked" for e in events)
    assert node_statuses(run) == {
        "a": NodeStatus.SUCCESS,
        "h": NodeStatus.CANCELLED,
        "b": NodeStatus.CANCELLED,
        "c": NodeStatus.CANCELLED,
    }
    assert run.s.status is ExecutionStatus.CANCELLED
    assert run.s.timers == {}
    assert run.s.history[-1].reason == "user asked"


def test_cancel_without_reason_has_a_default_reason(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    events = run.feed(lf.cancel(), lf.at(1))
    assert events[-1].type is E.EXECUTION_CANCELLED
    assert events[-1].reason == "cancelled by request"


def test_cancel_during_a_scheduled_retry_cancels_the_node(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http", retry=lf.retry())))
    run.feed(lf.fail("h", retryable=True), lf.at(1))
    events = run.feed(lf.cancel(), lf.at(2))
    assert types(events) == [(E.NODE_CANCELLED, "h"), (E.EXECUTION_CANCELLED, None)]
    assert run.feed(lf.fire(lf.timer_id(TimerKind.RETRY, "h", 1)), lf.at(3)) == []


def test_cancel_after_the_end_yields_nothing(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    run.feed(lf.ok("a"), lf.at(1))
    assert run.feed(lf.cancel(), lf.at(2)) == []
    run2 = lf.run(lf.workflow(lf.node("a")))
    run2.feed(lf.cancel(), lf.at(1))
    assert run2.feed(lf.cancel(), lf.at(2)) == []
    assert run2.s.status is ExecutionStatus.CANCELLED


# ------------------------------------------------------------------------------ execution timeout


def test_execution_timeout_fails_the_run(lf) -> None:
    wf = lf.workflow(lf.node("a"), lf.node("h", "http"), lf.node("b", depends_on=["a"]), timeout_seconds=60)
    run = lf.run(wf)
    events = run.feed(lf.fire(lf.timer_id(TimerKind.EXECUTION_TIMEOUT)), lf.at(60))
    assert types(events) == [
        (E.NODE_CANCELLED, "a"),
        (E.NODE_CANCELLED, "h"),
        (E.NODE_SKIPPED, "b"),
        (E.EXECUTION_FAILED, None),
    ]
    assert events[-1].reason == "execution timed out"
    assert run.s.status is ExecutionStatus.FAILED
    assert run.feed(lf.fire("execution_timeout"), lf.at(61)) == []


def test_execution_timeout_timer_without_a_workflow_timeout_is_stale(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    assert run.feed(lf.fire(lf.timer_id(TimerKind.EXECUTION_TIMEOUT)), lf.at(60)) == []


# --------------------------------------------------------------------------------- determinism


def scripted_inputs(lf) -> list:
    wf = lf.workflow(
        lf.node("a"),
        lf.node("c", "condition", depends_on=["a"]),
        lf.node("big", depends_on=["c:true"]),
        lf.node("w", "wait"),
        lf.node("h", "http", depends_on=["w", "a"], retry=lf.retry()),
        timeout_seconds=600,
    )
    return [
        (lf.start(wf), lf.at(0)),
        (lf.ok("a", output=42), lf.at(1)),
        (lf.ok("c", output=True), lf.at(2)),
        (lf.fire("wait:w:1"), lf.at(3)),
        (lf.fail("h", 1, retryable=True), lf.at(4)),
        (lf.ok("a", output=42), lf.at(5)),  # duplicate
        (lf.fire("retry:h:1"), lf.at(6)),
        (lf.fire("lease:h:2"), lf.at(50)),
        (lf.ok("big", output="B"), lf.at(51)),
        (lf.ok("h", 3, output={"status": 200}), lf.at(52)),
    ]


def test_same_inputs_give_identical_events(lf) -> None:
    first, second = lf.run(), lf.run()
    for inp, now in scripted_inputs(lf):
        first.feed(inp, now)
    for inp, now in scripted_inputs(lf):
        second.feed(inp, now)
    assert first.log == second.log
    assert [e.model_dump() for e in first.log] == [e.model_dump() for e in second.log]
    assert first.s.status is ExecutionStatus.SUCCESS
    assert [e.seq for e in first.log] == list(range(1, len(first.log) + 1))


def test_reprocessing_an_input_after_a_crash_gives_the_same_events(lf) -> None:
    run = lf.run()
    for inp, now in scripted_inputs(lf):
        before = run.state
        events = run.feed(inp, now)
        assert decide(before, inp, now, lf.config) == events  # the replay after a crash
        assert decide(run.state, inp, now, lf.config) == []  # applied already: changes nothing


# ------------------------------------------------------------------------------ evolve and apply


def test_apply_drops_duplicates_and_rebuilds_the_state(lf) -> None:
    run = lf.run()
    for inp, now in scripted_inputs(lf):
        run.feed(inp, now)
    state = None
    for event in run.log:
        state = apply(state, event)
        assert apply(state, event) is state  # a redelivered event changes nothing
    assert state == run.state
    # a consumer that replays with duplicates interleaved reaches the same state
    state2 = None
    for event in [*run.log[:5], *run.log[:3], *run.log[3:]]:
        state2 = apply(state2, event)
    assert state2 == run.state


def test_apply_without_the_log_head_builds_nothing(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    assert apply(None, run.log[1]) is None
    assert apply(None, run.log[0]) is not None


def test_evolve_rejects_events_that_cannot_follow(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a"), lf.node("b", depends_on=["a"])))
    s = run.s
    created, started = run.log[0], run.log[1]

    def ev(**kw: object) -> ExecutionEvent:
        fields = {"execution_id": "e1", "seq": s.seq + 1, "at": lf.at(1), **kw}
        return ExecutionEvent.model_validate(fields)

    with pytest.raises(EvolveError, match="before execution_created"):
        evolve(None, started)
    with pytest.raises(EvolveError, match="must come first"):
        evolve(s, created)
    with pytest.raises(EvolveError, match="must come first"):
        evolve(None, created.model_copy(update={"workflow": None}))
    with pytest.raises(EvolveError, match="does not follow"):
        evolve(s, ev(type=E.NODE_SUCCEEDED, node_id="a", attempt=1, seq=s.seq + 2))
    with pytest.raises(EvolveError, match="does not follow"):
        evolve(s, ev(type=E.NODE_SUCCEEDED, node_id="a", attempt=1, seq=s.seq))
    with pytest.raises(EvolveError, match="unknown node"):
        evolve(s, ev(type=E.NODE_SUCCEEDED, node_id="ghost", attempt=1))
    with pytest.raises(EvolveError, match="unknown node"):
        evolve(s, ev(type=E.NODE_STARTED))
    with pytest.raises(EvolveError, match="cannot go from pending to success"):
        evolve(s, ev(type=E.NODE_SUCCEEDED, node_id="b", attempt=1))
    with pytest.raises(EvolveError, match="cannot go from running to skipped"):
        evolve(s, ev(type=E.NODE_SKIPPED, node_id="a"))
    with pytest.raises(EvolveError, match="retry from pending"):
        evolve(s, ev(type=E.NODE_RETRY_SCHEDULED, node_id="b", attempt=1, due_at=lf.at(2)))

    done = evolve(s, ev(type=E.NODE_SUCCEEDED, node_id="a", attempt=1))
    with pytest.raises(EvolveError, match="cannot start from success"):
        evolve(done, ev(type=E.NODE_STARTED, node_id="a", attempt=2, seq=done.seq + 1))
    ended = evolve(s, ev(type=E.EXECUTION_CANCELLED))
    with pytest.raises(EvolveError, match="after the execution ended"):
        evolve(ended, ev(type=E.NODE_CANCELLED, node_id="b", seq=ended.seq + 1))


def test_evolve_is_pure(lf) -> None:
    run = lf.run(lf.workflow(lf.node("a")))
    before = run.s
    snapshot = before.model_dump()
    event = ExecutionEvent(
        execution_id="e1",
        seq=before.seq + 1,
        type=E.NODE_SUCCEEDED,
        at=lf.at(1),
        node_id="a",
        attempt=1,
        output={"o": 1},
    )
    after = evolve(before, event)
    assert before.model_dump() == snapshot
    assert after.nodes["a"].status is NodeStatus.SUCCESS
    assert after.nodes["a"].finished_at == lf.at(1)
    assert evolve(before, event) == after


def test_decider_config_kind_defaults_to_task() -> None:
    cfg = DeciderConfig(kinds={"x": NodeKind(Dispatch.INLINE, 3)})
    assert cfg.kind("x") == NodeKind(Dispatch.INLINE, 3)
    assert cfg.kind("nope") == NodeKind(Dispatch.TASK, 30.0)
    assert cfg.lease_grace_seconds == 5.0
    assert cfg.max_lease_attempts == 5
