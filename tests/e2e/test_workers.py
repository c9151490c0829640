"""The worker registry on its own port: register, status, heartbeat, deregister, errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.dev.testing import EngineProcess, call, read_topic
from linkflow_stream.kafka.codec import default_codec
from projections.workers import FORGET_AFTER, WorkerRecord

pytestmark = pytest.mark.e2e


def test_register_and_status_like_the_seed(engine: EngineProcess) -> None:
    worker_id = f"worker-{uuid.uuid4().hex[:6]}"
    status, body = call(
        "POST",
        f"{engine.registry_url}/api/workers/register",
        {"id": worker_id, "capacity": 10, "tags": ["gpu"]},
    )
    assert (status, body) == (201, {"id": worker_id, "status": "registered"})
    status, body = call("GET", f"{engine.registry_url}/api/workers/status")
    assert status == 200
    workers = {w["id"]: w for w in body["workers"]}
    assert workers[worker_id]["capacity"] == 10 and workers[worker_id]["tags"] == ["gpu"]
    assert workers[worker_id]["alive"] is True
    engines = [w for w in body["workers"] if w["engine"]]
    assert engines, "the engine process registers itself"
    assert engines[0]["tags"] == ["default"] and engines[0]["capacity"] >= 1
    assert body["capacity"] >= 10 + engines[0]["capacity"]
    # an engine's own record is the engine's: taken over, it would hold only until its next heartbeat
    own = next(w["id"] for w in engines if w["alive"])
    for path, sent in (
        ("register", {"id": own, "capacity": 1}),
        (f"{own}/heartbeat", None),
        (f"{own}/deregister", None),
    ):
        status, body = call("POST", f"{engine.registry_url}/api/workers/{path}", sent)
        assert status == 409 and "is a running engine process" in body["error"]["message"], (path, body)
    _, unchanged = call("GET", f"{engine.registry_url}/api/workers/status")
    assert next(w for w in unchanged["workers"] if w["id"] == own)["engine"] is True

    assert call("POST", f"{engine.registry_url}/api/workers/{worker_id}/heartbeat")[0] == 200
    assert call("POST", f"{engine.registry_url}/api/workers/{worker_id}/deregister")[0] == 202
    _, after = call("GET", f"{engine.registry_url}/api/workers/status")
    assert worker_id not in {w["id"] for w in after["workers"]}
    status, body = call("POST", f"{engine.registry_url}/api/workers/{worker_id}/heartbeat")
    assert status == 404 and body["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{oops", "malformed JSON"),
        (b'{"id": "w1", "capacity": 0}', "capacity"),
        (b'{"id": "w1", "capacity": "10"}', "capacity"),
        (b'{"id": "bad id", "capacity": 1}', "id must match"),
        (b'{"id": "w1", "capacity": 1, "tags": ["GPU!"]}', "tags"),
        (b'{"id": "w1", "capacity": 1, "zone": "eu"}', "unknown field"),
    ],
)
def test_bad_registrations_are_400s(engine: EngineProcess, raw: bytes, message: str) -> None:
    status, body = call("POST", f"{engine.registry_url}/api/workers/register", raw=raw)
    assert status == 400 and body["error"]["type"] == "validation"
    assert message in body["error"]["message"]


async def _produce(engine: EngineProcess, key: bytes, value: bytes | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(engine.settings().topic(topic_names.WORKERS), value, key=key)
    finally:
        await producer.stop()


async def _records(engine: EngineProcess, key: bytes) -> list[bytes | None]:
    """The values of ``key`` in the (one-partition) workers topic, oldest first."""
    topic = engine.settings().topic(topic_names.WORKERS)
    return [r.value for r in await read_topic(engine.bootstrap, topic, partitions=1) if r.key == key]


def test_a_worker_not_heard_from_for_an_hour_is_forgotten_and_tombstoned(engine: EngineProcess) -> None:
    """Every process start is a new worker id: without this, each stayed in the compacted topic,
    in every engine's memory and in the listing (down) for ever."""
    old = now() - FORGET_AFTER - timedelta(minutes=1)
    gone = WorkerRecord(id=f"gone-{uuid.uuid4().hex[:6]}", capacity=1, registered_at=old, heartbeat_at=old)
    asyncio.run(_produce(engine, gone.id.encode(), default_codec().encode(gone)))
    deadline = time.monotonic() + 60
    tombstoned = False
    while not tombstoned:
        assert time.monotonic() < deadline, "no tombstone for the long-dead worker"
        mine = asyncio.run(_records(engine, gone.id.encode()))
        assert mine and mine[0] is not None, "its record came first"
        tombstoned = mine[-1] is None
        time.sleep(0.5)
    _, body = call("GET", f"{engine.registry_url}/api/workers/status")
    listed = {w["id"] for w in body["workers"]}
    assert gone.id not in listed
    assert any(w["engine"] and w["alive"] for w in body["workers"]), "the live engine stays"


def test_a_stopped_engines_record_can_be_deregistered(engine: EngineProcess) -> None:
    """Engines never deregister themselves and each process start is a new id: a stopped one is
    listed down for an hour unless an operator takes it out. Only a running engine's record is its
    own (the 409 of the registry test above)."""
    stopped_at = now() - timedelta(minutes=10)
    stopped = WorkerRecord(
        id=f"vm-{uuid.uuid4().hex[:6]}",
        capacity=4,
        registered_at=stopped_at,
        heartbeat_at=stopped_at,
        engine=True,
        roles=("executor",),
    )
    asyncio.run(_produce(engine, stopped.id.encode(), default_codec().encode(stopped)))
    deadline = time.monotonic() + 30  # listed once the engine's view has read it
    while stopped.id not in {
        w["id"] for w in call("GET", f"{engine.registry_url}/api/workers/status")[1]["workers"]
    }:
        assert time.monotonic() < deadline, "the stopped engine's record was never listed"
        time.sleep(0.2)
    status, body = call("POST", f"{engine.registry_url}/api/workers/{stopped.id}/deregister")
    assert status == 202, body
    _, listing = call("GET", f"{engine.registry_url}/api/workers/status")
    assert stopped.id not in {w["id"] for w in listing["workers"]}
