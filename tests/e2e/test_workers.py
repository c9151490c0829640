"""The worker registry on its own port: register, status, heartbeat, deregister, errors."""

from __future__ import annotations

import uuid

import pytest

from linkflow_stream.dev.testing import EngineProcess, call

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
