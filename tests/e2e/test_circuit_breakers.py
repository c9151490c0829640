"""Circuit breakers end to end: a real engine (two of them) on the real broker, calling a real
local HTTP server of the test's own, so the circuit of its origin is the test's alone."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition

from linkflow_stream.core.circuit import CircuitObservation
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, serve
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.consumers import committed_reader

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_target() -> Iterator[TargetServer]:
    """A target on a port of its own: its origin's circuit is this test's alone."""
    yield from serve()


def wf(name: str, url: str, breaker: Any, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": "h", "type": "http", "config": {"url": url, "circuit_breaker": breaker}}
    if retry is not None:
        node["retry"] = retry
    return {"id": f"{name}-{uuid.uuid4().hex[:8]}", "nodes": [node]}


def circuit(engine: EngineProcess, key: str) -> dict[str, Any] | None:
    status, body = call("GET", f"{engine.url}/api/admin/circuits", headers=engine.auth())
    assert status == 200, body
    assert body["count"] == len(body["circuits"])
    return next((c for c in body["circuits"] if c["key"] == key), None)


def wait_state(engine: EngineProcess, key: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    found = circuit(engine, key)
    while found is None or found["state"] != state:
        assert time.monotonic() < deadline, f"circuit {key} not {state} within {timeout}s: {found}"
        time.sleep(0.1)
        found = circuit(engine, key)
    return found


def run(engine: EngineProcess, workflow: dict[str, Any], wait: float = 60) -> dict[str, Any]:
    engine.register(workflow)
    status, body = engine.start_execution(workflow["id"])
    assert status == 202, body
    return engine.wait_status(body["id"], timeout=wait)


def metric(engine: EngineProcess, line_start: str) -> float:
    """The sum of the samples whose line starts with ``line_start`` (0 when none)."""
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(line_start))


async def observations(engine: EngineProcess) -> list[CircuitObservation]:
    """Every record on the engine's ``linkflow.circuits`` (one partition)."""
    consumer = committed_reader(engine.bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(f"{engine.prefix}linkflow.circuits", 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return [default_codec().decode(v, CircuitObservation) for v in values]


def test_failures_open_the_circuit_later_nodes_fail_fast_and_a_probe_closes_it(
    engine_factory: Callable[..., EngineProcess], own_target: TargetServer
) -> None:
    engine = engine_factory()
    key = own_target.url  # http://127.0.0.1:<port>: scheme, host and port
    breaker = {"failures": 3, "window_seconds": 120, "open_seconds": 15}

    failing = run(
        engine,
        wf(
            "fails",
            f"{own_target.url}/status/503",
            breaker,
            {"max_attempts": 3, "initial_delay_seconds": 0.1},
        ),
    )
    assert failing["status"] == "failed" and failing["nodes"]["h"]["attempts"] == 3, failing
    assert failing["nodes"]["h"]["error"]["error_class"] == "http_5xx"
    assert len(own_target.hits("/status/503")) == 3
    opened = circuit(engine, key)
    assert opened is not None, (
        "its own three failures open the circuit at once, on the instance that saw them"
    )
    assert (opened["kind"], opened["state"], opened["failures"], opened["opened_total"]) == (
        "http",
        "open",
        3,
        1,
    )
    assert opened["last_error"].startswith("http_5xx")

    # A node that retries with backoff, started while the circuit is open: its first attempts
    # fail fast; the first one after open_seconds is the probe, reaches the target and succeeds.
    patient_wf = wf(
        "patient",
        f"{own_target.url}/patient",
        breaker,
        {"max_attempts": 30, "initial_delay_seconds": 1, "multiplier": 1.5, "max_delay_seconds": 2},
    )
    engine.register(patient_wf)
    status, patient = engine.start_execution(patient_wf["id"])
    assert status == 202, patient

    # A node with no retries fails fast: the target never sees its request.
    fast = run(engine, wf("fast", f"{own_target.url}/fast", breaker))
    assert fast["status"] == "failed", fast
    error = fast["nodes"]["h"]["error"]
    assert (error["error_class"], error["retryable"]) == ("circuit_open", True), error
    assert own_target.hits("/fast") == []
    assert metric(engine, f'linkflow_circuit_state{{key="{key}",kind="http"}}') == 1
    assert metric(engine, "linkflow_circuit_rejected_total{") >= 1

    done = engine.wait_status(patient["id"], timeout=90)
    assert done["status"] == "success", done
    assert done["nodes"]["h"]["attempts"] >= 2, "it failed fast (and was retried) before the probe"
    assert len(own_target.hits("/patient")) == 1, "only the probe reached the target"
    closed = wait_state(engine, key, "closed")
    assert (closed["failures"], closed["opened_at"], closed["opened_total"]) == (0, None, 1)
    assert metric(engine, f'linkflow_circuit_state{{key="{key}",kind="http"}}') == 0
    assert metric(engine, "linkflow_circuit_opened_total{") == 1

    # On the topic: the three counted failures and the probe's success; nothing for the healthy
    # calls or the fast failures.
    written = asyncio.run(observations(engine))
    assert [(o.ok, o.probe, o.error_class) for o in written] == [
        (False, False, "http_5xx"),
        (False, False, "http_5xx"),
        (False, False, "http_5xx"),
        (True, True, None),
    ]
    assert {(o.kind, o.key) for o in written} == {("http", key)}


def test_an_instance_fails_fast_on_a_circuit_another_instance_opened(
    engine_factory: Callable[..., EngineProcess], own_target: TargetServer
) -> None:
    a = engine_factory()
    key = own_target.url
    breaker = {"failures": 2, "window_seconds": 120, "open_seconds": 300}
    failing = run(
        a,
        wf(
            "fails",
            f"{own_target.url}/status/502",
            breaker,
            {"max_attempts": 2, "initial_delay_seconds": 0.1},
        ),
    )
    assert failing["status"] == "failed" and failing["nodes"]["h"]["attempts"] == 2, failing
    assert wait_state(a, key, "open")["failures"] == 2

    # b starts after the circuit opened and never called the target: it knows the circuit from
    # linkflow.circuits alone.
    b = a.sibling()
    b.start()
    try:
        seen = wait_state(b, key, "open")
        assert (seen["failures"], seen["opened_at"]) == (2, circuit(a, key)["opened_at"])  # type: ignore[index]
        a.stop()  # every partition, and every task, is b's from now on
        fast = run(b, wf("fast", f"{own_target.url}/fast", breaker))
        assert fast["status"] == "failed", fast
        assert fast["nodes"]["h"]["error"]["error_class"] == "circuit_open"
        assert own_target.hits("/fast") == []
        assert metric(b, "linkflow_circuit_rejected_total{") == 1
        assert metric(b, "linkflow_circuit_opened_total{") == 0, "b's own observations opened nothing"
    finally:
        b.stop()


def test_bad_circuit_breaker_shapes_are_refused_with_400(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory()
    for bad in ("on", {"failures": 0}, {"open_seconds": -1}, {"failures": 2, "retries": 1}):
        body = wf("bad", "http://127.0.0.1:9/x", bad)
        status, answer = call("POST", f"{engine.url}/api/workflows", body)
        assert status == 400, (bad, answer)
        assert answer["error"]["type"] == "validation"
        assert "node 'h': config.circuit_breaker" in answer["error"]["message"], answer
    off = wf("off", "http://127.0.0.1:9/x", False)
    assert call("POST", f"{engine.url}/api/workflows", off)[0] == 201
