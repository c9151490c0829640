"""Admission control on a real engine and broker (issue 11, item 4): with
``LINKFLOW_MAX_QUEUED_PER_TEAM`` set, a team's start beyond its queued runs is refused, with 429
and ``Retry-After`` over HTTP, and as a ``too_many_requests`` dead letter from ``linkflow.start``;
another team is not affected; once the queue drains, starts are accepted again.

Runs stay queued because the orchestrator cannot read them yet, not because anything is mocked:
an open Kafka transaction on every partition of ``linkflow.requests.normal`` holds the topic's
last stable offset, and the orchestrator reads ``read_committed``, so the starts the API appends
after it wait (as behind a saturated orchestrator). Aborting the transaction lets them start.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from linkflow_stream.client import Client, TooManyRequests
from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.dev.testing import EngineProcess, call

from .test_kafka_start import dead_letters, json_request, produce

pytestmark = pytest.mark.e2e

LIMIT = 2


def transform(workflow_id: str, team: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "team": team,
        "nodes": [{"id": "double", "type": "transform", "config": {"expression": "input.n * 2"}}],
    }


def start(engine: EngineProcess, workflow_id: str, n: int = 1) -> tuple[int, Any, dict[str, str]]:
    """POST /api/executions; (status, body, headers)."""
    req = urllib.request.Request(
        f"{engine.url}/api/executions",
        data=json.dumps({"workflow_id": workflow_id, "input_data": {"n": n}}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def rejected(engine: EngineProcess, path: str, team: str) -> float:
    sample = f'linkflow_admission_rejected_total{{path="{path}",team="{team}"}}'
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{sample} "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def hold_requests(engine: EngineProcess) -> AIOKafkaProducer:
    """An open transaction on every partition of linkflow.requests.normal (see the module doc)."""
    topic = engine.settings().topic(topic_names.requests(Priority.NORMAL))
    producer = AIOKafkaProducer(
        bootstrap_servers=engine.bootstrap,
        transactional_id=f"admission-test-{uuid.uuid4().hex[:8]}",
        transaction_timeout_ms=120_000,
    )
    await producer.start()
    await producer.begin_transaction()
    for partition in await producer.partitions_for(topic):
        await producer.send_and_wait(topic, b"held", key=b"held", partition=partition)
    return producer


async def release(producer: AIOKafkaProducer) -> None:
    await producer.abort_transaction()
    await producer.stop()


class Held:
    """``hold_requests`` for a sync test: the producer lives on a loop of its own until released."""

    def __init__(self, engine: EngineProcess) -> None:
        self.loop = asyncio.new_event_loop()
        self.producer = self.loop.run_until_complete(hold_requests(engine))

    def release(self) -> None:
        try:
            self.loop.run_until_complete(release(self.producer))
        finally:
            self.loop.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_a_team_over_its_queue_is_refused_on_both_paths_and_others_are_not(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory(
        LINKFLOW_MAX_QUEUED_PER_TEAM=str(LIMIT), LINKFLOW_ADMISSION_RETRY_AFTER_SECONDS="3"
    )
    tag = uuid.uuid4().hex[:6]
    alpha, beta = f"alpha-{tag}", f"beta-{tag}"
    engine.register(transform(f"wf-a-{tag}", alpha))
    engine.register(transform(f"wf-b-{tag}", beta))

    held = Held(engine)
    try:
        accepted = []
        for n in range(LIMIT):
            status, body, _ = start(engine, f"wf-a-{tag}", n)
            assert status == 202, body
            accepted.append(body["id"])
        _, queue = call("GET", f"{engine.url}/api/admin/queue/status")
        assert queue["queues"]["normal"]["queued"] >= LIMIT, queue  # truly queued, not running

        status, body, headers = start(engine, f"wf-a-{tag}")
        assert status == 429, body
        assert headers["Retry-After"] == "3"
        assert body["error"]["type"] == "too_many_requests"
        assert f"team '{alpha}' has {LIMIT} runs queued" in body["error"]["message"]
        assert "LINKFLOW_MAX_QUEUED_PER_TEAM=2" in body["error"]["message"]

        with Client(engine.url) as client, pytest.raises(TooManyRequests) as info:
            client.start_execution(f"wf-a-{tag}", {"n": 9})
        assert (info.value.status, info.value.retryable, info.value.retry_after_seconds) == (429, True, 3.0)

        status, body, _ = start(engine, f"wf-b-{tag}")
        assert status == 202, "another team's queue is its own"

        key = f"over-{tag}".encode()
        record = json_request(workflow_id=f"wf-a-{tag}", input={"n": 5})
        asyncio.run(produce(engine, topic_names.START, [(key, record)]))
        letters = asyncio.run(dead_letters(engine, {key}))
        assert letters[key]["dlq_reason"].startswith(
            f"too_many_requests: team '{alpha}' has {LIMIT} runs queued"
        )
        assert rejected(engine, "http", alpha) == 2
        assert rejected(engine, "kafka", alpha) == 1
        assert rejected(engine, "http", beta) == 0
        for execution_id in accepted:
            assert engine.get(execution_id)["status"] == "pending"
    finally:
        held.release()

    for execution_id in accepted:
        assert engine.wait_status(execution_id)["status"] == "success"
    # the queue drained: the team's starts are accepted again
    status, body, _ = start(engine, f"wf-a-{tag}", 21)
    assert status == 202, body
    assert engine.wait_status(body["id"])["nodes"]["double"]["output"] == 42
    _, page = call("GET", f"{engine.url}/api/executions?workflow_id=wf-a-{tag}&limit=100")
    assert page["count"] == LIMIT + 1, "nothing refused ever ran"


def test_without_a_limit_nothing_is_refused(engine: EngineProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    engine.register(transform(f"wf-free-{tag}", f"free-{tag}"))
    held = Held(engine)
    try:
        for n in range(LIMIT + 3):
            status, body, _ = start(engine, f"wf-free-{tag}", n)
            assert status == 202, body
    finally:
        held.release()
    assert rejected(engine, "http", f"free-{tag}") == 0
