"""Webhook triggers on a real engine: ``POST /webhook/{workflow_id}`` with the workflow's token.

The token comes once, in the 201 of the workflow's first registration; only its hash reaches
``linkflow.keys``. A wrong, missing, rotated-away or other workflow's token gets 401, and so does
an unknown workflow (the route tells nothing about which ids exist).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.dev.testing import EngineProcess, call
from linkflow_stream.kafka.consumers import committed_reader

pytestmark = pytest.mark.e2e


def doubling_workflow() -> dict[str, Any]:
    return {
        "id": f"hook-{uuid.uuid4().hex[:8]}",
        "nodes": [{"id": "double", "type": "transform", "config": {"expression": "input.n * 2"}}],
    }


def hook(
    engine: EngineProcess, workflow_id: str, body: Any, token: str | None, query: str = ""
) -> tuple[int, Any]:
    headers = {"X-LinkFlow-Token": token} if token is not None else {}
    return call("POST", f"{engine.url}/webhook/{workflow_id}{query}", body, {**headers, "X-Priority": "high"})


async def raw_key_records(bootstrap: str, topic: str) -> list[bytes]:
    consumer = committed_reader(bootstrap)
    await consumer.start()
    try:
        part = TopicPartition(topic, 0)
        consumer.assign([part])
        await consumer.seek_to_beginning(part)
        end = (await consumer.end_offsets([part]))[part]
        values: list[bytes] = []
        while await consumer.position(part) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


def test_a_webhook_starts_a_run_with_its_body_as_input(engine: EngineProcess) -> None:
    wf = doubling_workflow()
    registered = engine.register(wf)
    token = registered["webhook_token"]
    assert token.startswith("lfw_")
    status, body = hook(engine, wf["id"], {"n": 21}, token, "?wait=30")
    assert status == 200, body
    assert body["status"] == "success"
    assert body["priority"] == "high"
    assert body["nodes"]["double"]["output"] == 42
    status, body = hook(engine, wf["id"], {"n": 1}, token)
    assert status == 202, body
    assert engine.wait_status(body["id"], {"success"})["nodes"]["double"]["output"] == 2


def test_a_new_version_keeps_the_token_and_rotation_replaces_it(engine: EngineProcess) -> None:
    wf = doubling_workflow()
    first = engine.register(wf)["webhook_token"]
    second = engine.register({**wf, "name": "changed"})
    assert second["version"] == 2
    assert "webhook_token" not in second  # shown once, with the workflow's first version
    assert hook(engine, wf["id"], {"n": 2}, first, "?wait=30")[0] == 200
    status, rotated = call("POST", f"{engine.url}/api/workflows/{wf['id']}/webhook-token")
    assert status == 201, rotated
    assert rotated["webhook_token"] != first
    status, body = hook(engine, wf["id"], {"n": 2}, first)
    assert status == 401, body
    assert hook(engine, wf["id"], {"n": 2}, rotated["webhook_token"], "?wait=30")[0] == 200
    status, body = call("POST", f"{engine.url}/api/workflows/no-such-{uuid.uuid4().hex[:6]}/webhook-token")
    assert status == 404, body


def test_wrong_missing_or_foreign_tokens_are_refused_with_401(engine: EngineProcess) -> None:
    wf, other = doubling_workflow(), doubling_workflow()
    token = engine.register(wf)["webhook_token"]
    other_token = engine.register(other)["webhook_token"]
    prefix, key_id, secret = token.split("_", 2)
    for wrong in (
        None,
        "",
        "nonsense",
        f"{prefix}_{key_id}_{secret[:-2]}xx",
        other_token,
        f"lfk_{key_id}_{secret}",
    ):
        status, body = hook(engine, wf["id"], {"n": 1}, wrong)
        assert status == 401, (wrong, body)
        assert body["error"]["type"] == "unauthorized"
        assert "X-LinkFlow-Token" in body["error"]["message"]
    status, body = hook(engine, f"missing-{uuid.uuid4().hex[:6]}", {"n": 1}, token)
    assert status == 401, body
    # a token is no API key: as a bearer key it opens nothing (auth off here, so only its
    # listing is checked: /api/keys shows API keys, not the workflows' tokens)
    status, listed = call("GET", f"{engine.url}/api/keys")
    assert status == 200, listed
    assert key_id not in {k["id"] for k in listed["keys"]}


def test_bad_input_to_a_webhook_is_a_400_not_a_run(engine: EngineProcess) -> None:
    wf = doubling_workflow()
    token = engine.register(wf)["webhook_token"]
    status, body = call(
        "POST", f"{engine.url}/webhook/{wf['id']}", raw=b"{not json", headers={"X-LinkFlow-Token": token}
    )
    assert status == 400, body
    status, body = call(
        "POST", f"{engine.url}/webhook/{wf['id']}?wait=abc", {"n": 1}, headers={"X-LinkFlow-Token": token}
    )
    assert status == 400, body


def test_only_the_tokens_hash_is_stored(engine: EngineProcess) -> None:
    wf = doubling_workflow()
    token = engine.register(wf)["webhook_token"]
    _, key_id, secret = token.split("_", 2)
    values = asyncio.run(raw_key_records(engine.bootstrap, engine.settings().topic(topic_names.KEYS)))
    mine = [v for v in values if key_id.encode() in v]
    assert mine, "the token's record is on linkflow.keys"
    digest = hashlib.sha256(secret.encode()).hexdigest().encode()
    assert all(digest in v for v in mine)
    assert not any(secret.encode() in v for v in values)
