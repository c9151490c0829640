"""The circuit breaker: the pure state machine (time passed in), the policy's shapes, and the
guard an executor puts around an attempt (with a clock the test moves)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkflow_stream.core.auth import Role
from linkflow_stream.core.circuit import (
    MAX_SECONDS,
    BreakerPolicy,
    BreakerPolicyError,
    Circuit,
    CircuitObservation,
    CircuitState,
    admit,
    observe,
    render,
)
from linkflow_stream.core.messages import NodeResult, NodeTask
from linkflow_stream.core.node_contract import (
    RETRYABLE_CLASSES,
    ConfigError,
    NodeContext,
    NodeExecutor,
    NodeFailure,
)
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.rate_limit import RateLimitBucket
from linkflow_stream.http.api import Api
from linkflow_stream.http.auth import role_for
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.nodes.http import HttpNode
from linkflow_stream.runtime.breakers import Breakers, circuit_of
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.runtime.throttle import NodeThrottle

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def obs(
    seconds: float,
    *,
    ok: bool = False,
    probe: bool = False,
    failures: int = 3,
    window: float = 10,
    open_for: float = 20,
    source: str = "other",
) -> CircuitObservation:
    return CircuitObservation(
        kind="http",
        key="http://t:80",
        at=at(seconds),
        ok=ok,
        probe=probe,
        error_class=None if ok else "http_5xx",
        message=None if ok else "HTTP 503",
        failures=failures,
        window_seconds=window,
        open_seconds=open_for,
        source=source,
    )


def fold(*observations: CircuitObservation) -> Circuit:
    circuit: Circuit | None = None
    for o in observations:
        circuit = observe(circuit, o)
    assert circuit is not None
    return circuit


# -- the state machine -----------------------------------------------------------------------------


def test_n_failures_within_the_window_open_the_circuit() -> None:
    two = fold(obs(0), obs(1))
    assert two.state(at(1)) is CircuitState.CLOSED and admit(two, at(1), probing=False) == "allow"
    three = observe(two, obs(2))
    assert three.state(at(2)) is CircuitState.OPEN
    assert (three.opened_at, three.opened_total) == (at(2), 1)
    assert admit(three, at(21.9), probing=False) == "reject"


def test_failures_older_than_the_window_do_not_count() -> None:
    circuit = fold(obs(0), obs(5), obs(10.5), obs(16))  # never three within 10 s
    assert circuit.state(at(16)) is CircuitState.CLOSED
    assert circuit.recent_failures(at(16)) == 2  # 10.5 and 16
    assert circuit.recent_failures(at(30)) == 0
    assert observe(circuit, obs(17)).open  # 10.5, 16, 17


def test_a_success_does_not_forgive_failures_and_a_late_one_does_not_close() -> None:
    circuit = fold(obs(0), obs(1), obs(1.5, ok=True), obs(2))
    assert circuit.open, "two failures, a success, a failure: still three within the window"
    assert observe(circuit, obs(3, ok=True)).open, "only the probe's success closes"


def test_after_open_seconds_one_probe_goes_and_its_success_closes() -> None:
    circuit = fold(obs(0), obs(1), obs(2))
    assert circuit.state(at(22)) is CircuitState.HALF_OPEN
    assert admit(circuit, at(22), probing=False) == "probe"
    assert admit(circuit, at(22), probing=True) == "reject", "one probe at a time per instance"
    closed = observe(circuit, obs(23, ok=True, probe=True))
    assert closed.state(at(23)) is CircuitState.CLOSED
    assert (closed.failures, closed.opened_at, closed.opened_total) == ((), None, 1)
    assert admit(closed, at(23), probing=False) == "allow"


def test_a_failed_probe_opens_it_again_from_then() -> None:
    circuit = fold(obs(0), obs(1), obs(2), obs(23, probe=True))
    assert circuit.state(at(42.9)) is CircuitState.OPEN
    assert circuit.state(at(43)) is CircuitState.HALF_OPEN
    assert (circuit.opened_at, circuit.opened_total) == (at(23), 2)


def test_a_late_failure_while_open_counts_but_does_not_extend_it() -> None:
    circuit = fold(obs(0), obs(1), obs(2), obs(5))
    assert circuit.opened_at == at(2) and len(circuit.failures) == 4


def test_two_instances_racing_the_probe_the_first_folded_outcome_decides() -> None:
    opened = fold(obs(0), obs(1), obs(2))
    # both instances probed; the success is folded first: closed, and the other's failure then
    # counts as one failure of a closed circuit
    success_first = fold(obs(0), obs(1), obs(2), obs(23, ok=True, probe=True), obs(23.1, probe=True))
    assert success_first.state(at(24)) is CircuitState.CLOSED
    assert success_first.recent_failures(at(24)) == 1
    # the failure folded first re-opens; the success then closes it
    failure_first = fold(obs(0), obs(1), obs(2), obs(23, probe=True), obs(23.1, ok=True, probe=True))
    assert failure_first.state(at(24)) is CircuitState.CLOSED
    assert opened.opened_total == 1


def test_each_observation_carries_its_own_policy() -> None:
    circuit = fold(obs(0, failures=10), obs(1, failures=10), obs(2, failures=2, open_for=5))
    assert circuit.open and circuit.open_seconds == 5 and circuit.threshold == 2


def test_render_says_what_the_admin_api_lists() -> None:
    circuit = fold(obs(0), obs(1), obs(2))
    shown = render(circuit, at(3))
    assert shown["state"] == "open" and shown["failures"] == 3 and shown["opened_total"] == 1
    assert shown["opened_at"] == at(2).isoformat() and shown["half_open_at"] == at(22).isoformat()
    assert shown["last_error"] == "http_5xx: HTTP 503"
    assert render(circuit, at(22))["state"] == "half_open"


@given(
    millis=st.lists(st.integers(min_value=0, max_value=100_000), min_size=1, max_size=30),
    failures=st.integers(min_value=1, max_value=6),
    window_millis=st.integers(min_value=500, max_value=30_000),
)
def test_closed_means_fewer_than_n_failures_in_any_window_so_far(
    millis: list[int], failures: int, window_millis: int
) -> None:
    """Folding failures only (in time order): the circuit is open exactly when some window of
    ``window`` seconds held ``failures`` of them. (Whole milliseconds, as the topic carries them.)"""
    millis = sorted(millis)
    circuit = fold(*(obs(m / 1000, failures=failures, window=window_millis / 1000) for m in millis))
    crowded = any(
        sum(1 for u in millis[: i + 1] if u > t - window_millis) >= failures for i, t in enumerate(millis)
    )
    assert circuit.open == crowded


# -- the policy -----------------------------------------------------------------------------------


def test_the_policy_default_off_and_custom() -> None:
    assert BreakerPolicy.parse(None) == BreakerPolicy(5, 30.0, 30.0)
    assert BreakerPolicy.parse(False) is None
    assert BreakerPolicy.parse({"failures": 2}) == BreakerPolicy(2, 30.0, 30.0)
    assert BreakerPolicy.parse({"failures": 1, "window_seconds": 0.5, "open_seconds": 3600}) == BreakerPolicy(
        1, 0.5, 3600.0
    )


@pytest.mark.parametrize(
    "bad",
    [
        "yes",
        [],
        {"failures": 0},
        {"failures": 1.5},
        {"failures": True},
        {"window_seconds": 0},
        {"open_seconds": 3601},
        {"open_seconds": "30"},
        {"failure": 3},
    ],
)
def test_bad_policy_shapes_are_refused(bad: Any) -> None:
    with pytest.raises(BreakerPolicyError):
        BreakerPolicy.parse(bad)
    with pytest.raises(ConfigError) as err:
        HttpNode().validate({"url": "http://example.com/", "circuit_breaker": bad})
    assert err.value.field == "circuit_breaker"


def test_circuit_open_is_retryable_and_the_listing_is_for_admins() -> None:
    assert RETRYABLE_CLASSES["circuit_open"] is True
    assert role_for("GET", "/api/admin/circuits", Api.ADMIN_ROUTES) is Role.ADMIN


def test_circuits_are_per_origin_and_per_connection() -> None:
    assert circuit_of("http", {"url": "https://API.example.com/a?b=1"}) == (
        "http",
        "https://api.example.com:443",
    )
    assert circuit_of("http", {"url": "http://[::1]:8080/x"}) == ("http", "http://[::1]:8080")
    assert circuit_of("db", {"connection": "main"}) == ("db", "main")
    assert circuit_of("code", {"source": "x"}) is None
    assert circuit_of("http", {"url": "not a url"}) is None


# -- the guard ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> datetime:
        return at(self.t)


async def attempt(breakers: Breakers, failure: str | None, config: dict[str, Any] | None = None) -> str:
    """Run one guarded attempt that fails with ``failure`` (or succeeds); what happened."""
    config = config or {"url": "http://t/x", "circuit_breaker": {"failures": 2, "open_seconds": 10}}
    called = False

    def call_target() -> None:
        nonlocal called
        called = True
        if failure:
            raise NodeFailure(failure, "boom")

    try:
        async with breakers.guard("http", config):
            call_target()
    except NodeFailure as exc:
        return exc.error_type if called else f"fast:{exc.error_type}"
    return "ok"


async def test_the_guard_opens_fails_fast_probes_and_publishes_what_matters() -> None:
    published: list[CircuitObservation] = []

    async def publish(o: CircuitObservation) -> None:
        published.append(o)

    clock = Clock()
    breakers = Breakers(publish, clock=clock)
    assert await attempt(breakers, None) == "ok"
    assert published == [], "a success of a closed circuit is not written"
    assert await attempt(breakers, "http_4xx") == "http_4xx"
    assert published == [], "a 4xx says the target is up"
    assert await attempt(breakers, "http_5xx") == "http_5xx"
    clock.t = 1
    assert await attempt(breakers, "timeout") == "timeout"
    assert [o.error_class for o in published] == ["http_5xx", "timeout"]
    assert await attempt(breakers, None) == "fast:circuit_open"
    (shown,) = breakers.listing()
    assert (shown["key"], shown["state"], shown["failures"]) == ("http://t:80", "open", 2)
    clock.t = 11
    assert await attempt(breakers, "http_5xx") == "http_5xx", "the probe went"
    assert published[-1].probe and not published[-1].ok
    assert await attempt(breakers, None) == "fast:circuit_open", "open again for 10 s"
    clock.t = 21
    assert await attempt(breakers, None) == "ok"
    assert published[-1].probe and published[-1].ok
    assert breakers.listing()[0]["state"] == "closed"


async def test_an_open_circuit_nobody_probes_is_forgotten_an_hour_after_it_could_have_been() -> None:
    """Only a probe's success closed a circuit: one of a target nobody calls any more stayed, with
    its metric series, for ever (URLs may come from run inputs)."""
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(2):
        await attempt(breakers, "connection")
    assert breakers.listing()[0]["state"] == "open"
    clock.t = 10 + MAX_SECONDS - 1  # half-open, not probed, for just under an hour
    assert breakers.listing()[0]["state"] == "half_open"
    clock.t = 10 + MAX_SECONDS + 1
    assert breakers.listing() == []
    assert await attempt(breakers, "connection") == "connection", "closed: it starts afresh"
    assert breakers.listing()[0]["state"] == "closed"


async def test_a_neutral_probe_outcome_lets_the_next_attempt_probe() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    for _ in range(2):
        await attempt(breakers, "connection")
    clock.t = 10
    assert await attempt(breakers, "validation") == "validation"
    assert await attempt(breakers, None) == "ok"
    assert breakers.listing()[0]["state"] == "closed"


async def test_another_instances_observations_open_the_circuit_here_but_own_ones_are_not_folded_twice() -> (
    None
):
    clock = Clock()
    here = Breakers(clock=clock)
    there_published: list[CircuitObservation] = []

    async def publish(o: CircuitObservation) -> None:
        there_published.append(o)

    there = Breakers(publish, clock=clock)
    await attempt(there, "http_5xx")
    await attempt(there, "http_5xx")
    for o in there_published:
        here.apply(o)
        assert there.apply(o) is None, "its own record comes back from the log: skipped"
    assert there.listing()[0]["failures"] == 2
    assert await attempt(here, None) == "fast:circuit_open"


async def test_off_means_no_circuit() -> None:
    breakers = Breakers(clock=Clock())
    config = {"url": "http://t/x", "circuit_breaker": False}
    for _ in range(10):
        assert await attempt(breakers, "http_5xx", config) == "http_5xx"
    assert breakers.listing() == []


async def test_a_db_connection_has_its_own_circuit_and_other_node_types_none() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    main = {"connection": "main", "circuit_breaker": {"failures": 1}}
    with pytest.raises(NodeFailure):
        async with breakers.guard("db", main):
            raise NodeFailure("connection", "refused")
    with pytest.raises(NodeFailure) as fast:
        async with breakers.guard("db", main):
            pytest.fail("the open circuit let the attempt through")
    assert fast.value.error_type == "circuit_open" and fast.value.retryable
    async with breakers.guard("db", {"connection": "other"}):
        pass  # another connection: closed
    async with breakers.guard("code", {"circuit_breaker": "not looked at"}):
        pass
    assert [(c["kind"], c["key"], c["state"]) for c in breakers.listing()] == [("db", "main", "open")]


async def test_a_bad_shape_computed_at_run_time_fails_the_attempt_as_validation() -> None:
    breakers = Breakers(clock=Clock())
    with pytest.raises(NodeFailure) as err:
        async with breakers.guard("http", {"url": "http://t/", "circuit_breaker": {"failures": 0}}):
            pytest.fail("not attempted")
    assert err.value.error_type == "validation" and "config.circuit_breaker" in err.value.message


async def test_while_this_instances_probe_runs_its_other_attempts_fail_fast() -> None:
    clock = Clock()
    breakers = Breakers(clock=clock)
    config = {"url": "http://t/x", "circuit_breaker": {"failures": 1, "open_seconds": 5}}
    assert await attempt(breakers, "timeout", config) == "timeout"
    clock.t = 6
    release = asyncio.Event()
    probing = asyncio.Event()

    async def probe() -> None:
        async with breakers.guard("http", config):
            probing.set()
            await release.wait()

    running = asyncio.create_task(probe())
    await probing.wait()
    assert breakers.listing()[0]["state"] == "half_open"
    assert await attempt(breakers, None, config) == "fast:circuit_open", "one probe at a time"
    release.set()
    await running
    assert breakers.listing()[0]["state"] == "closed"
    assert await attempt(breakers, None, config) == "ok"


class _Results:
    """Stands in for the publisher: keeps the results the executor sends."""

    def __init__(self) -> None:
        self.sent: list[NodeResult] = []

    async def send(self, outgoing: list[Outgoing]) -> None:
        self.sent += [o.record for o in outgoing if isinstance(o.record, NodeResult)]


class _Failing:
    """An http node whose target answers 503."""

    calls = 0

    def validate(self, config: dict[str, Any]) -> None:
        return None

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        _Failing.calls += 1
        raise NodeFailure("http_5xx", "HTTP 503")


async def test_an_attempt_on_an_open_circuit_fails_fast_without_spending_a_rate_limit_token() -> None:
    """Issue 11: an attempt that will not call out must not take the token a later call needs."""
    clock, results = Clock(), _Results()
    breakers = Breakers(clock=clock)
    throttle = NodeThrottle(lambda _pool: 1, lambda: 0.0)  # no refill: tokens only go
    executor = Executor(
        {"http": cast(NodeExecutor, _Failing())},
        cast(Publisher, results),
        1,
        breakers=breakers,
        throttle=throttle,
    )
    limit = RateLimitBucket(key="wf/call/", per_second=0.001, burst=3)
    config = {"url": "http://t/x", "circuit_breaker": {"failures": 2, "open_seconds": 10}}

    async def run(attempt_no: int) -> NodeResult:
        task = NodeTask(
            execution_id="e",
            workflow_id="wf",
            node_id="call",
            attempt=attempt_no,
            node_type="http",
            config=config,
            input={},
            timeout_seconds=5,
            lease_until=at(60),
            rate_limit=limit,
        )
        await executor.submit(task)
        await asyncio.gather(*executor.running.values())
        return results.sent[-1]

    assert [(await run(n)).error for n in (1, 2)] != [None, None]
    assert _Failing.calls == 2, "two calls out, two tokens spent: the circuit is open now"
    fast = await run(3)
    assert fast.error is not None and fast.error.error_class == "circuit_open"
    assert fast.throttled_until is None
    assert _Failing.calls == 2
    assert breakers.rejects("http", config)
    assert throttle.check(limit, at(0)) is None, "the third token is still there for a real call"
