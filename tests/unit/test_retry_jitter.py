"""Retries that behave (issue 11, item 7): jitter that replays, and ``retry_on``.

Jitter comes from a hash of execution, node and attempt, never from a random source, so the same
failure decided twice (a re-processed input after a crash) schedules the same retry; it only ever
shortens the backoff, by at most ``jitter`` of it. ``retry_on`` picks which retryable classes are
retried; the decider and the API's dry run ask the same ``RetryPolicy.would_retry``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import NodeError, NodeResult, StartExecution
from linkflow_stream.core.node_contract import retry_on_problems
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import NodeDefinition, RetryPolicy, WorkflowDefinition, jitter_fraction
from linkflow_stream.http.bodies import RetryPolicyBody, validated
from linkflow_stream.kafka import codec
from linkflow_stream.nodes import build_registry
from linkflow_stream.settings import Settings

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"http": NodeKind(Dispatch.TASK)})
ids = st.text(min_size=1, max_size=20)


def started(wf: WorkflowDefinition, execution_id: str = "e") -> ExecutionState:
    state: ExecutionState | None = None
    start = StartExecution(execution_id=execution_id, workflow=wf, input={}, requested_at=T0)
    for e in decide(None, start, T0, CFG):
        state = evolve(state, e)
    assert state is not None
    return state


def failed(error_class: str, retryable: bool = True, execution_id: str = "e") -> NodeResult:
    error = NodeError(error_class=error_class, message="it broke", retryable=retryable)
    return NodeResult(
        execution_id=execution_id,
        node_id="h",
        attempt=1,
        ok=False,
        error=error,
        started_at=T0,
        finished_at=T0,
    )


def one_node(policy: RetryPolicy) -> WorkflowDefinition:
    return WorkflowDefinition(
        id="wf", created_at=T0, nodes=(NodeDefinition(id="h", type="http", retry=policy),)
    )


# ------------------------------------------------------------------------------------------ jitter


@settings(max_examples=300, deadline=None)
@given(execution_id=ids, node_id=ids, attempt=st.integers(1, 100))
def test_the_jitter_fraction_is_a_pure_function_in_zero_to_one(
    execution_id: str, node_id: str, attempt: int
) -> None:
    fraction = jitter_fraction(execution_id, node_id, attempt)
    assert 0.0 <= fraction < 1.0
    assert jitter_fraction(execution_id, node_id, attempt) == fraction


@settings(max_examples=300, deadline=None)
@given(
    initial=st.floats(0, 100),
    multiplier=st.floats(1, 5),
    max_delay=st.floats(0, 600),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 20),
    execution_id=ids,
)
def test_a_jittered_delay_stays_within_its_bounds(
    initial: float, multiplier: float, max_delay: float, jitter: float, attempt: int, execution_id: str
) -> None:
    policy = RetryPolicy(
        max_attempts=21,
        initial_delay_seconds=initial,
        multiplier=multiplier,
        max_delay_seconds=max_delay,
        jitter=jitter,
    )
    backoff = policy.delay(attempt)
    delay = policy.retry_delay(attempt, execution_id, "h")
    assert backoff * (1 - jitter) - 1e-9 <= delay <= backoff <= max_delay
    assert policy.retry_delay(attempt, execution_id, "h") == delay


def test_jitter_spreads_the_retries_of_many_runs() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_seconds=10, jitter=0.5)
    delays = {policy.retry_delay(1, f"exec_{i}", "h") for i in range(200)}
    assert len(delays) == 200, "every run waits its own time"
    assert min(delays) < 6.0
    assert max(delays) > 9.0
    assert all(5.0 <= d <= 10.0 for d in delays)


def test_no_jitter_keeps_the_exact_schedule() -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay_seconds=1, multiplier=2)
    assert [policy.retry_delay(a, "e", "h") for a in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_the_decider_schedules_the_jittered_delay_and_says_so() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_seconds=4, jitter=0.5)
    for execution_id in ("e1", "e2", "e3"):
        state = started(one_node(policy), execution_id)
        first = decide(state, failed("http_5xx", execution_id=execution_id), T0, CFG)
        again = decide(state, failed("http_5xx", execution_id=execution_id), T0, CFG)
        assert first == again, "the same failure decided twice schedules the same retry"
        (event,) = first
        delay = policy.retry_delay(1, execution_id, "h")
        assert event.type is EventType.NODE_RETRY_SCHEDULED
        assert event.due_at == T0 + timedelta(seconds=delay)
        assert 2.0 <= delay <= 4.0
        assert event.reason == f"retry in {delay:.3f}s (backoff 4.000s, jitter -{4.0 - delay:.3f}s)"


def test_a_retry_without_jitter_names_its_backoff() -> None:
    (event,) = decide(started(one_node(RetryPolicy(max_attempts=2))), failed("timeout"), T0, CFG)
    assert event.reason == "retry in 1.000s (backoff 1.000s)"


# ---------------------------------------------------------------------------------------- retry_on


def test_retry_on_retries_only_the_listed_classes() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=("timeout", "http_429"))
    state = started(one_node(policy))
    (retry,) = decide(state, failed("timeout"), T0, CFG)
    assert retry.type is EventType.NODE_RETRY_SCHEDULED
    not_listed = decide(state, failed("http_5xx"), T0, CFG)
    assert not_listed[0].type is EventType.NODE_FAILED
    assert not_listed[0].reason == "not retried: http_5xx is not in retry_on (timeout, http_429)"
    assert not_listed[-1].type is EventType.EXECUTION_FAILED
    not_retryable = decide(state, failed("timeout", retryable=False), T0, CFG)
    assert not_retryable[0].type is EventType.NODE_FAILED, "retry_on never makes a failure retryable"
    assert not_retryable[0].reason is None


@pytest.mark.parametrize(
    ("retry_on", "error_class", "retryable", "attempt", "expected"),
    [
        (None, "http_5xx", True, 1, True),
        (None, "http_5xx", False, 1, False),
        (None, "http_5xx", True, 3, False),
        (("http_5xx",), "http_5xx", True, 2, True),
        (("http_5xx",), "timeout", True, 1, False),
        (("http_5xx",), "http_5xx", False, 1, False),
    ],
)
def test_would_retry_is_one_rule(
    retry_on: tuple[str, ...] | None, error_class: str, retryable: bool, attempt: int, expected: bool
) -> None:
    assert (
        RetryPolicy(max_attempts=3, retry_on=retry_on).would_retry(error_class, retryable, attempt)
        is expected
    )


def test_retry_on_names_only_retryable_classes() -> None:
    assert retry_on_problems(None) == []
    assert retry_on_problems(("timeout", "connection", "http_429", "http_5xx", "lease_expired")) == []
    (unknown,) = retry_on_problems(("http_5xxx",))
    assert unknown.startswith("retry_on: 'http_5xxx' is not a failure class (one of: ")
    (never,) = retry_on_problems(("http_4xx",))
    assert never.startswith("retry_on: 'http_4xx' is never retried (retryable classes: ")


def workflow_body(retry: Any, where: str = "node") -> dict[str, Any]:
    node: dict[str, Any] = {"id": "h", "type": "http", "config": {"url": "https://example.org/"}}
    body: dict[str, Any] = {"id": "wf", "nodes": [node]}
    if where == "node":
        node["retry"] = retry
    else:
        body["retry"] = retry
    return body


@pytest.mark.parametrize("where", ["node", "workflow"])
@pytest.mark.parametrize(
    ("retry", "message"),
    [
        ({"max_attempts": 3, "retry_on": "timeout"}, "retry.retry_on: Input should be a valid array"),
        ({"max_attempts": 3, "retry_on": []}, "retry_on: Tuple should have at least 1 item"),
        ({"max_attempts": 3, "retry_on": [5]}, "retry.retry_on.0: Input should be a valid string"),
        ({"max_attempts": 3, "retry_on": ["nope"]}, "retry.retry_on: 'nope' is not a failure class"),
        ({"max_attempts": 3, "retry_on": ["validation"]}, "retry.retry_on: 'validation' is never retried"),
        ({"max_attempts": 3, "jitter": 1.5}, "retry.jitter: Input should be less than or equal to 1"),
        ({"max_attempts": 3, "jitter": -0.1}, "retry.jitter: Input should be greater than or equal to 0"),
        ({"max_attempts": 3, "backoff_jitter": 0.1}, "retry.backoff_jitter: Extra inputs are not permitted"),
    ],
)
def test_registration_refuses_a_wrong_retry_policy(where: str, retry: dict[str, Any], message: str) -> None:
    settings_ = Settings()
    with pytest.raises(ValidationError) as info:
        parse_workflow(workflow_body(retry, where), build_registry(settings_), version=1, created_at=T0)
    assert message in info.value.message


def test_registration_takes_jitter_and_retry_on() -> None:
    body = workflow_body({"max_attempts": 3, "jitter": 0.25, "retry_on": ["timeout", "http_5xx"]})
    wf = parse_workflow(body, build_registry(Settings()), version=1, created_at=T0)
    assert wf.nodes[0].retry == RetryPolicy(max_attempts=3, jitter=0.25, retry_on=("timeout", "http_5xx"))


def test_the_retry_body_takes_jitter_and_retry_on() -> None:
    body = {"strategy": "fixed", "max_attempts": 3, "jitter": 0.2, "retry_on": ["http_429"]}
    policy = validated(RetryPolicyBody, body).policy()
    assert (policy.multiplier, policy.jitter, policy.retry_on) == (1.0, 0.2, ("http_429",))
    with pytest.raises(ValidationError, match="retry_on must be a valid array"):
        validated(RetryPolicyBody, {"retry_on": "http_429"})


def test_the_policy_model_is_strict_about_its_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        RetryPolicy.model_validate({"retry_on": "timeout"})


def test_a_policy_with_jitter_and_retry_on_survives_the_wire() -> None:
    wf = one_node(RetryPolicy(max_attempts=3, jitter=0.3, retry_on=("timeout", "http_5xx")))
    wire = codec.default_codec()
    assert wire.decode(wire.encode(wf), WorkflowDefinition) == wf
