"""JSONata evaluation is bounded (time, depth), deterministic ($now, $millis, $random) and, for
inline nodes, off the event loop (ADR 0015)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any

import jsonata
import pytest
from jsonata import datetimeutils

from linkflow_stream.core import clock
from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.expression_frame import evaluation_frame
from linkflow_stream.core.expressions import MAX_DEPTH, compile_expression, evaluate
from linkflow_stream.core.mapping import MAPPING_TIMEOUT_SECONDS, map_output, resolve_config
from linkflow_stream.core.messages import NodeResult, StartExecution
from linkflow_stream.core.node_contract import NodeContext, NodeFailure
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import NodeDefinition
from linkflow_stream.nodes import build_registry, decider_config, expression_worker
from linkflow_stream.nodes.condition import ConditionNode
from linkflow_stream.nodes.expression_worker import evaluate_bounded
from linkflow_stream.nodes.transform import TransformNode
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings

T = from_millis(1_700_000_000_123)
"""2023-11-14T22:13:20.123Z"""

RUNAWAY = "$sum([1..8000000].($ * 2))"
"""Ran 64 s unbounded on the event loop and froze the engine."""
TAIL_RECURSION = "($f := function($x){ $f($x+1) }; $f(0))"
"""Never returns; tail-call optimised, so it never gets deeper: only the time limit stops it."""
DEEP_RECURSION = "($f := function($x){ $f($x+1) + 1 }; $f(0))"
"""Gets deeper at every call: the depth limit stops it."""

BOUND = 1.0
SLACK = 2.5
"""How far past the bound a stopped evaluation may finish. Generous: ``RUNAWAY`` builds and frees
lists of millions of items in steps the timebox cannot interrupt, on a shared 2-core machine."""


def failure(source: str, timeout_seconds: float = BOUND, data: Any = None) -> tuple[NodeFailure, float]:
    started = time.monotonic()
    with pytest.raises(NodeFailure) as caught:
        evaluate(source, data or {}, timeout_seconds=timeout_seconds)
    return caught.value, time.monotonic() - started


# -- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [RUNAWAY, TAIL_RECURSION, f"$eval('{RUNAWAY}')"])
def test_a_runaway_stops_at_the_time_limit_as_timeout(source: str) -> None:
    exc, took = failure(source)
    assert (exc.error_type, exc.retryable) == ("timeout", False)
    assert exc.message == "JSONata evaluation stopped at its time limit of 1 s"
    assert BOUND <= took < BOUND + SLACK


def test_deep_recursion_stops_at_the_depth_limit_as_expression_error() -> None:
    # a time limit far away, so that only the depth limit can stop it (under load, reaching the
    # depth took over the 1 s bound and the test saw a timeout instead)
    exc, _ = failure(DEEP_RECURSION, timeout_seconds=120)
    assert (exc.error_type, exc.retryable) == ("expression_error", False)
    assert f"recursion depth limit of {MAX_DEPTH}" in exc.message


def test_recursion_well_inside_the_depth_limit_still_works() -> None:
    assert evaluate("($f := function($n){ $n <= 1 ? 1 : $n * $f($n-1) }; $f(100)) > 0", {}) is True


def test_other_evaluation_errors_are_expression_errors() -> None:
    exc, _ = failure("$number('x')")
    assert exc.error_type == "expression_error"
    assert exc.message.startswith("JSONata evaluation failed: ")


def test_a_result_returned_past_the_limit_is_dropped_as_timeout() -> None:
    """One slow step cannot be interrupted (here: building a million-item range); its result does
    not count."""
    exc, _ = failure("$count([1..1000000])", timeout_seconds=0.001)
    assert exc.error_type == "timeout"


# -- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("$now()", "2023-11-14T22:13:20.123Z"),
        ("$millis()", 1_700_000_000_123),
        ("$now('[Y0001]-[M01]-[D01]')", "2023-11-14"),
        ("$now('[H01]:[m01]', '+0100')", "23:13"),
        ("$map([1, 2], function($v){ $millis() + $v })", [1_700_000_000_124, 1_700_000_000_125]),
        ("$eval('$millis()')", 1_700_000_000_123),
        ("$eval('$' & 'millis()')", 1_700_000_000_123),  # a name built at run time
        ("$fromMillis($millis())", "2023-11-14T22:13:20.123Z"),
    ],
)
def test_now_and_millis_are_the_given_time(source: str, expected: Any) -> None:
    assert evaluate(source, {}, now=T) == expected


def test_a_frame_binds_the_clock_and_random_only_for_expressions_that_can_call_them() -> None:
    def bound(source: str) -> bool:
        frame = evaluation_frame(timeout_ms=1000, max_depth=10, now=T, seed=None, source=source)
        return all(frame.lookup(name) is not None for name in ("now", "millis", "random", "shuffle"))

    assert not bound("nodes.a.n * 2")
    callers = ("$now()", "$millis()", "$random()", "$shuffle([1, 2])", "$eval(x)")
    assert all(bound(source) for source in callers)
    assert evaluate("nodes.a.n * 2", {"nodes": {"a": {"n": 21}}}, now=T) == 42


def test_now_takes_the_library_signature() -> None:
    exc, _ = failure("$now(1)")
    assert exc.error_type == "expression_error"
    assert "does not match" in exc.message


def test_without_a_time_now_is_the_evaluation_time_not_a_stale_one() -> None:
    evaluate("$millis()", {}, now=T)  # compiled and evaluated once, long "ago"
    before = to_millis(clock.now())
    assert before <= evaluate("$millis()", {}) <= to_millis(clock.now())


def test_random_repeats_for_the_same_seed_and_differs_for_another() -> None:
    source = "[$random(), $random(), $map([1, 2], function(){ $random() })]"
    first = evaluate(source, {}, seed="e1/t/1")
    assert evaluate(source, {}, seed="e1/t/1") == first
    assert evaluate(source, {}, seed="e1/t/2") != first
    assert len(set(first)) == 4, "one generator for the whole evaluation, not reseeded per call"
    assert all(0 <= x < 1 for x in first)


def test_shuffle_repeats_for_the_same_seed_and_keeps_the_library_edges() -> None:
    """The library's ``$shuffle`` drew from the process-wide generator: a step decided again after
    a crash (or a replay) shuffled otherwise."""
    source = "$shuffle([1..30])"
    first = evaluate(source, {}, seed="e1/t/1")
    assert evaluate(source, {}, seed="e1/t/1") == first
    assert evaluate(source, {}, seed="e1/t/2") != first
    assert sorted(first) == list(range(1, 31))
    assert evaluate("$shuffle([7])", {}, seed="s") == [7]
    assert evaluate("$shuffle(nothing)", {}, seed="s") is None
    both = evaluate("[$random(), $shuffle([1..5])]", {}, seed="e1/t/1")
    assert evaluate("[$random(), $shuffle([1..5])]", {}, seed="e1/t/1") == both, "one generator for both"


TIME_ONLY = "$fromMillis($toMillis('10:00', '[H01]:[m01]'))"
"""A picture without a date: the library fills the date in from its own clock."""


def test_to_millis_fills_in_the_date_of_the_given_time_not_the_wall_clock() -> None:
    """jsonata-python took the missing date from ``utcnow()``: the same step decided again on
    another day (after a crash, in a replay) got another result."""
    assert evaluate(TIME_ONLY, {}, now=T) == "2023-11-14T10:00:00.000Z"
    assert evaluate(TIME_ONLY, {}, now=from_millis(to_millis(T) + 86_400_000)) == "2023-11-15T10:00:00.000Z"
    assert evaluate("$fromMillis($toMillis('11', '[M01]'))", {}, now=T) == "2023-11-01T00:00:00.000Z"
    today = clock.now().date().isoformat()
    got = evaluate(TIME_ONLY, {})
    assert got[:10] in (today, clock.now().date().isoformat()), "no time given: today (or past midnight)"


def test_after_an_evaluation_the_library_clock_reads_the_real_time_again() -> None:
    """The pin ends with its evaluation, a failed one too: nothing else in the thread (another
    library call, the next evaluation without a time) reads a step's time."""
    assert evaluate(TIME_ONLY, {}, now=T) == "2023-11-14T10:00:00.000Z"
    with pytest.raises(NodeFailure):
        evaluate(f"({TIME_ONLY}; $error('x'))", {}, now=T)
    assert abs(to_millis(library_clock_now()) - to_millis(clock.now())) < 60_000


def test_to_millis_dates_are_each_evaluations_own_across_threads() -> None:
    """The library's clock is module-wide; what it reads is pinned per thread, as slow
    evaluations run in a pool (``expression_worker``)."""

    def one(day: int) -> tuple[str, str]:
        at = from_millis(to_millis(T) + day * 86_400_000)
        return evaluate(
            f"($sum([1..2000]); {TIME_ONLY})", {}, now=at
        ), f"{at.date().isoformat()}T10:00:00.000Z"

    with ThreadPoolExecutor(max_workers=4) as pool:
        for got, expected in pool.map(one, range(200)):
            assert got == expected


def library_clock_now() -> Any:
    """What the library's own clock reads here, outside any evaluation (naive UTC)."""
    return datetimeutils.datetime.datetime.utcnow().replace(tzinfo=UTC)


def test_compiling_leaves_no_thread_using_the_cached_expression_as_scratch_space() -> None:
    """jsonata-python evaluates through its thread's "current" instance and writes the scope in
    effect on it; ``evaluate`` roots each call's scope at the compiled object's. If a cached
    object were some thread's "current", calls on other threads would see that thread's variables.
    """
    before = getattr(jsonata.Jsonata.CURRENT, "jsonata", None)
    compiled = compile_expression(f"/* {uuid.uuid4()} */ 1")
    assert getattr(jsonata.Jsonata.CURRENT, "jsonata", None) is before
    assert before is not compiled


def test_threads_sharing_a_cached_expression_see_only_their_own_bindings() -> None:
    """Each call's variables, time and seed are its own. Without the fix above, tens of the
    readers here typically saw a writer's ``$secret`` (timing decides how many, so the test above
    pins the cause)."""
    # A fresh source, so a pool thread compiles it and then evaluates through it.
    source = (
        f"/* {uuid.uuid4()} */ input.read ? [$secret, $millis()]"
        " : ($secret := input.v; $sum([1..300]); [$secret, $millis(), $random()])"
    )
    randoms = [evaluate("$random()", {}, seed=f"s{i}") for i in range(400)]

    def one(i: int) -> tuple[Any, Any]:
        read, millis = i % 2 == 0, 1_700_000_000_000 + i
        got = evaluate(source, {"input": {"read": read, "v": i}}, now=from_millis(millis), seed=f"s{i}")
        return got, [millis] if read else [i, millis, randoms[i]]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for got, expected in pool.map(one, range(400)):
            assert got == expected


# -- off the event loop -----------------------------------------------------------------------


async def test_the_event_loop_keeps_running_while_a_runaway_is_evaluated() -> None:
    """A runaway of many small steps (here endless recursion) shares the GIL with the loop.

    Not ``RUNAWAY``: building its 8-million-item range is one C-level step that holds the GIL for
    0.4-1 s on this machine, and collecting lists that large can pause every thread too (ADR 0015).
    """
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        with pytest.raises(NodeFailure) as caught:
            await evaluate_bounded(TAIL_RECURSION, {}, timeout_seconds=BOUND)
    finally:
        ticker.cancel()
    took = time.monotonic() - started
    assert caught.value.error_type == "timeout"
    assert took < BOUND + SLACK
    # Up to 100 ticks in a free second; a blocked loop would manage none.
    assert ticks >= 20, f"the loop ticked {ticks} times in {took:.2f} s"


async def test_an_evaluation_the_timebox_cannot_stop_fails_at_the_timeout_plus_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stuck(*args: Any, **kwargs: Any) -> None:
        time.sleep(1.5)  # one long step that never reaches a timebox check

    monkeypatch.setattr(expression_worker, "evaluate", stuck)
    monkeypatch.setattr(expression_worker, "ON_LOOP_SECONDS", 0)  # straight to the worker thread
    started = time.monotonic()
    with pytest.raises(NodeFailure) as caught:
        await evaluate_bounded("1", {}, timeout_seconds=0.2)
    took = time.monotonic() - started
    assert caught.value.error_type == "timeout"
    assert "did not finish within its time limit of 0.2 s" in caught.value.message
    assert took < 0.2 + expression_worker.GRACE_SECONDS + 0.5


async def test_a_quick_expression_never_leaves_the_loop_and_a_slow_one_moves_to_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real = expression_worker.evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(expression_worker, "evaluate", spy)
    assert await evaluate_bounded("1 + 1", {}, timeout_seconds=5) == 2
    assert threads == [threading.main_thread().name]
    threads.clear()
    slow = "$sum([1..20000].($ * 2))"  # about 0.3 s here: past the on-loop bound, within the node's
    assert await evaluate_bounded(slow, {}, timeout_seconds=5) == 20000 * 20001
    assert threads[0] == threading.main_thread().name and threads[1].startswith("linkflow-jsonata")


def ctx(timeout_seconds: float = BOUND) -> NodeContext:
    return NodeContext("e1", "wf", "n", 1, timeout_seconds, now=T, seed="e1/n/1")


async def test_transform_and_condition_use_the_context_time_seed_and_timeout() -> None:
    assert await TransformNode().execute(ctx(), {"expression": "[$millis(), $random()]"}, {}) == [
        1_700_000_000_123,
        evaluate("$random()", {}, seed="e1/n/1"),
    ]
    assert await ConditionNode().execute(ctx(), {"expression": "$now('[Y0001]') = '2023'"}, {}) is True
    for node in (TransformNode(), ConditionNode()):
        with pytest.raises(NodeFailure) as caught:
            await node.execute(ctx(0.5), {"expression": f"{RUNAWAY} > 0"}, {})
        assert caught.value.error_type == "timeout"


def test_transform_and_condition_keep_their_default_timeout() -> None:
    assert TransformNode.default_timeout_seconds == ConditionNode.default_timeout_seconds == 5.0


# -- mappings ---------------------------------------------------------------------------------


def test_mappings_are_deterministic_with_a_seed_of_their_own_per_expression() -> None:
    node = NodeDefinition(
        id="h",
        type="http",
        input={"url": "'https://x.test/' & $string($millis())", "a": "$random()", "b": "$random()"},
        output="{'at': $now(), 'r': $random()}",
    )
    config = resolve_config(node, {}, now=T, seed="e1/h/1")
    assert config["url"] == "https://x.test/1700000000123"
    assert config == resolve_config(node, {}, now=T, seed="e1/h/1")
    assert config["a"] != config["b"]
    out = map_output(node, None, {}, now=T, seed="e1/h/1")
    assert out == map_output(node, None, {}, now=T, seed="e1/h/1")
    assert out["at"] == "2023-11-14T22:13:20.123Z"


def test_a_runaway_mapping_fails_as_timeout_at_the_mapping_limit() -> None:
    node = NodeDefinition(id="h", type="http", input={"url": RUNAWAY}, output=RUNAWAY)
    for run in (lambda: resolve_config(node, {}), lambda: map_output(node, None, {})):
        started = time.monotonic()
        with pytest.raises(NodeFailure) as caught:
            run()
        assert time.monotonic() - started < MAPPING_TIMEOUT_SECONDS + SLACK
        assert caught.value.error_type == "timeout"
        limit = f"mapping ran past its time limit of {MAPPING_TIMEOUT_SECONDS:g} s"
        assert caught.value.message.endswith(limit)


def test_the_input_mapping_keys_share_one_time_limit() -> None:
    slow = "$count([1..300000].($ * 2))"  # a good fraction of a 0.3 s limit, each
    node = NodeDefinition(id="h", type="http", input={f"k{i}": slow for i in range(8)})
    with pytest.raises(NodeFailure) as caught:
        resolve_config(node, {}, timeout_seconds=0.3)
    assert caught.value.error_type == "timeout"
    assert "input mapping ran past its time limit of 0.3 s" in caught.value.message


# -- the orchestrator step --------------------------------------------------------------------


def start(nodes: list[dict[str, Any]]) -> tuple[Stepper, Step]:
    settings = Settings()
    registry = build_registry(settings)
    orch = Stepper(registry, decider_config(registry, settings))
    wf = parse_workflow({"id": "wf", "nodes": nodes}, orch.registry, version=1, created_at=T)
    request = StartExecution(execution_id="e1", workflow=wf, input={}, requested_at=T)
    return orch, asyncio.run(orch.step(None, request, T))


def test_an_inline_node_evaluates_with_the_step_time_and_its_attempt_as_seed() -> None:
    nodes: list[dict[str, Any]] = [
        {"id": "t", "type": "transform", "config": {"expression": "[$millis(), $random()]"}},
    ]
    _, step = start(nodes)
    _, again = start(nodes)
    assert step.state is not None and again.state is not None
    assert step.state.nodes["t"].output == [to_millis(T), evaluate("$random()", {}, seed="e1/t/1")]
    assert again.state.nodes["t"].output == step.state.nodes["t"].output


def test_an_output_mapping_of_a_task_result_uses_its_finish_time() -> None:
    orch, step = start(
        [{"id": "h", "type": "http", "config": {"url": "https://example.org/"}, "output": "$millis()"}]
    )
    finished = from_millis(to_millis(T) + 5000)
    result = NodeResult(
        execution_id="e1", node_id="h", attempt=1, ok=True, output={}, started_at=T, finished_at=finished
    )
    done = asyncio.run(orch.step(step.state, result, from_millis(to_millis(T) + 9000)))
    assert done.state is not None
    assert done.state.nodes["h"].output == to_millis(finished)


def test_a_runaway_transform_fails_its_node_as_timeout_at_its_timeout() -> None:
    started = time.monotonic()
    _, step = start(
        [{"id": "t", "type": "transform", "timeout_seconds": BOUND, "config": {"expression": RUNAWAY}}]
    )
    assert time.monotonic() - started < BOUND + SLACK
    assert step.state is not None
    error = step.state.nodes["t"].error
    assert error is not None
    assert (step.state.status.value, error.error_class, error.retryable) == ("failed", "timeout", False)
