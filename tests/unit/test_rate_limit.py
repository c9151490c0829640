"""Token buckets (``core/rate_limit.py``), the executor's throttle and the team start limiter:
time is passed in, so every case is exact."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.mapping import rate_limit_bucket
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.rate_limit import Buckets, RateLimit, RateLimitBucket, TokenBucket, instance_share
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import NodeDefinition
from linkflow_stream.http.errors import RateLimitedError
from linkflow_stream.http.start_limit import TeamStartLimiter
from linkflow_stream.nodes import build_registry
from linkflow_stream.runtime.throttle import NodeThrottle
from linkflow_stream.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_new_bucket_is_full_and_grants_its_burst_then_refuses() -> None:
    bucket = TokenBucket.full(per_second=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(0.5)


def test_a_bucket_refills_at_its_rate_and_never_above_its_burst() -> None:
    bucket = TokenBucket.full(per_second=2.0, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)  # one token after 0.5 s
    assert not bucket.take(0.5)
    bucket.refill(1000.0)
    assert bucket.tokens == 2.0  # an hour idle fills it to its burst, no more


def test_a_refused_take_consumes_nothing() -> None:
    bucket = TokenBucket.full(per_second=1.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    for t in (0.1, 0.2, 0.3):
        assert not bucket.take(t)
    assert bucket.take(1.0)  # the refusals did not push it back


def test_resize_keeps_no_more_than_the_new_burst() -> None:
    bucket = TokenBucket.full(per_second=10.0, burst=10, now=0.0)
    bucket.resize(5.0, 2.0, 0.0)
    assert bucket.tokens == 2.0
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(0.2)


def test_buckets_queue_refused_callers_one_interval_apart() -> None:
    buckets = Buckets()
    verdicts = [buckets.take("k", 2.0, 1, 10.0) for _ in range(5)]
    assert verdicts[0].granted
    assert [v.granted for v in verdicts[1:]] == [False] * 4
    # 0.5 s apart, plus a margin of 0.05 s for callers coming back late
    assert [v.retry_in for v in verdicts[1:]] == pytest.approx([0.5, 1.05, 1.6, 2.15])
    # once the queue is behind us, a refusal is told the next token's time again
    buckets.take("k", 2.0, 1, 20.0)
    assert buckets.take("k", 2.0, 1, 20.0).retry_in == pytest.approx(0.5)
    # without queueing, every refusal is told the next token's time
    assert buckets.take("k", 2.0, 1, 20.1, queue=False).retry_in == pytest.approx(0.4)
    assert buckets.take("k", 2.0, 1, 20.1, queue=False).retry_in == pytest.approx(0.4)


def test_buckets_are_separate_per_name() -> None:
    buckets = Buckets()
    assert buckets.take("a", 1.0, 1, 0.0).granted
    assert buckets.take("b", 1.0, 1, 0.0).granted
    assert not buckets.take("a", 1.0, 1, 0.0).granted


def test_full_idle_buckets_are_forgotten_when_the_table_is_full() -> None:
    buckets = Buckets(max_idle=3)
    for name in "abc":
        buckets.take(name, 1.0, 1, 0.0)
    buckets.take("d", 1.0, 1, 0.5)  # a, b, c are not full yet: kept
    assert len(buckets) == 4
    buckets.take("e", 1.0, 1, 10.0)  # now a to d are full again: forgotten, nothing lost
    assert len(buckets) == 1


def test_forgotten_buckets_take_their_queue_hints_with_them() -> None:
    buckets = Buckets(max_idle=2)
    for n in range(50):  # each key's callers queued 5 s ahead, then the key is left alone
        name = f"k{n}"
        for _ in range(6):
            buckets.take(name, 1.0, 1, float(n * 2))
    assert len(buckets) <= 2
    assert len(buckets._next_hint) <= 2  # the leak this guards against is internal


def test_an_instance_share_divides_the_rate_and_keeps_at_least_one_token() -> None:
    assert instance_share(10.0, 20, 4) == (2.5, 5.0)
    assert instance_share(2.0, 1, 2) == (1.0, 1.0)
    assert instance_share(2.0, 1, 0) == (2.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    per_second=st.sampled_from([0.5, 1.0, 2.0, 7.5]),
    burst=st.integers(1, 5),
    gaps=st.lists(st.floats(0.0, 1.5, allow_nan=False), min_size=1, max_size=80),
)
def test_grants_in_any_window_stay_within_burst_plus_rate_times_length(
    per_second: float, burst: int, gaps: list[float]
) -> None:
    """Whatever the callers do, the grants in any interval [s, s + t] number at most
    burst + per_second * t: the bound ADR 0031 states and the e2e test checks on real calls."""
    buckets = Buckets()
    now, granted = 0.0, []
    for gap in gaps:
        now += gap
        if buckets.take("k", per_second, burst, now).granted:
            granted.append(now)
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + per_second * (granted[j] - start) + 1e-9


def test_the_node_throttle_splits_a_limit_among_live_executors() -> None:
    clock, live = Clock(), [1]
    throttle = NodeThrottle(lambda: live[0], clock)
    limit = RateLimitBucket(key="wf/h/", per_second=4.0, burst=2)
    at = from_millis(1_700_000_000_000)
    assert throttle.check(limit, at) is None
    assert throttle.check(limit, at) is None
    assert throttle.check(limit, at) == at + timedelta(milliseconds=251)  # 1/4 s, rounded up
    live[0] = 4  # four executors now: 1/s and 1 token here
    clock.t += 1.0
    assert throttle.check(limit, at) is None
    until = throttle.check(limit, at)
    assert until is not None
    assert until - at == timedelta(milliseconds=1001)


def test_the_team_start_limiter_refuses_with_retry_after_and_counts() -> None:
    clock, refused = Clock(), []
    limiter = TeamStartLimiter(2.0, 1, clock, on_refused=lambda: refused.append(1))
    limiter.admit("alpha")
    limiter.admit("beta")  # another team's bucket
    with pytest.raises(RateLimitedError) as caught:
        limiter.admit("alpha")
    assert caught.value.retry_after_seconds == pytest.approx(0.5)
    assert caught.value.error_type == "rate_limited"
    assert refused == [1]
    clock.t += 0.5
    limiter.admit("alpha")


def test_the_team_start_burst_defaults_to_the_rate_rounded_up() -> None:
    assert TeamStartLimiter(2.5).burst == 3
    assert TeamStartLimiter(0.1).burst == 1


# ------------------------------------------------------------------------- validation and keys

REGISTRY = build_registry(Settings(databases={"main": "sqlite:////tmp/linkflow-rate-limit-test.db"}))
AT = from_millis(1_700_000_000_000)


def workflow_with(node: dict[str, Any]) -> dict[str, Any]:
    return {"id": "wf", "nodes": [node]}


def http_node(**extra: Any) -> dict[str, Any]:
    return {"id": "h", "type": "http", "config": {"url": "https://example.com/"}, **extra}


@pytest.mark.parametrize(
    ("rate_limit", "message"),
    [
        ({"per_second": 0}, "rate_limit.per_second"),
        ({"per_second": -1}, "rate_limit.per_second"),
        ({"per_second": "fast"}, "rate_limit.per_second"),
        ({"burst": 2}, "rate_limit.per_second"),
        ({"per_second": 1, "burst": 0}, "rate_limit.burst"),
        ({"per_second": 1, "burst": 1.5}, "rate_limit.burst"),
        ({"per_second": 1, "window": 3}, "rate_limit.window"),
        ({"per_second": 1, "key": "$.input.("}, "rate_limit.key: JSONata syntax error"),
        ({"per_second": 1, "key": ""}, "rate_limit.key"),
        ("2/s", "rate_limit"),
    ],
)
def test_a_bad_rate_limit_is_refused_naming_the_field(rate_limit: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_workflow(workflow_with(http_node(rate_limit=rate_limit)), REGISTRY, version=1, created_at=AT)
    assert message in caught.value.message
    assert "node 'h'" in caught.value.message


@pytest.mark.parametrize("node_type", ["transform", "wait", "code", "condition"])
def test_a_rate_limit_on_a_node_that_does_not_call_out_is_refused(node_type: str) -> None:
    node = {"id": "x", "type": node_type, "config": {"expression": "1", "seconds": 1, "source": "x"}}
    with pytest.raises(ValidationError) as caught:
        parse_workflow(
            workflow_with({**node, "rate_limit": {"per_second": 1}}), REGISTRY, version=1, created_at=AT
        )
    assert f"node 'x': rate_limit: only http and db nodes call out; a {node_type} node takes none" in (
        caught.value.message
    )


@pytest.mark.parametrize("node_type", ["http", "db"])
def test_a_rate_limit_on_http_and_db_nodes_is_accepted(node_type: str) -> None:
    config = (
        {"url": "https://example.com/"}
        if node_type == "http"
        else {"connection": "main", "query": "select 1"}
    )
    wf = parse_workflow(
        workflow_with(
            {
                "id": "n",
                "type": node_type,
                "config": config,
                "rate_limit": {"per_second": 2, "key": "input.tenant"},
            }
        ),
        REGISTRY,
        version=1,
        created_at=AT,
    )
    assert wf.nodes[0].rate_limit == RateLimit(per_second=2, burst=1, key="input.tenant")


def test_the_bucket_key_is_evaluated_over_the_node_input() -> None:
    node = NodeDefinition(id="h", type="http", rate_limit=RateLimit(per_second=2, key="input.tenant"))
    bucket = rate_limit_bucket("wf", node, {"input": {"tenant": "acme"}, "nodes": {}})
    assert bucket == RateLimitBucket(key="wf/h/acme", per_second=2, burst=1)
    assert rate_limit_bucket("wf", node, {"input": {}, "nodes": {}}) == RateLimitBucket(
        key="wf/h/", per_second=2, burst=1
    )
    numbered = NodeDefinition(id="h", type="http", rate_limit=RateLimit(per_second=2, key="input.n"))
    listed = rate_limit_bucket("wf", numbered, {"input": {"n": [1, 2]}, "nodes": {}})
    assert listed is not None
    assert listed.key == "wf/h/[1, 2]"  # not a string: its JSON
    assert rate_limit_bucket("wf", NodeDefinition(id="h", type="http"), {}) is None


def test_a_key_that_fails_to_evaluate_fails_like_a_mapping() -> None:
    node = NodeDefinition(id="h", type="http", rate_limit=RateLimit(per_second=2, key="$error('no')"))
    with pytest.raises(NodeFailure) as caught:
        rate_limit_bucket("wf", node, {"input": {}, "nodes": {}})
    assert caught.value.error_type == "expression_error"
    assert caught.value.message.startswith("rate_limit.key:")
