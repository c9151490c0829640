"""Signals on a real engine and broker (ADR 0035): ``wait_event`` nodes take a signal delivered by
run id over HTTP, by correlation key to every run waiting with it (and no other), and from
``linkflow.signals``; a signal that comes early is kept; a duplicate id counts once; a wait with
no signal fails with class ``timeout``; bad input is a 4xx; and a run waiting on a signal when
the engine is killed with -9 takes the signal after the restart and completes once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from linkflow_stream.client import Client, NotFound
from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Signal
from linkflow_stream.dev.testing import EngineProcess, call, read_topic
from linkflow_stream.kafka.codec import default_codec

pytestmark = pytest.mark.e2e


def waiting_workflow(
    engine: EngineProcess,
    *,
    name: str = "approved",
    timeout_seconds: float = 120,
    key: str | None = "input.order",
    before: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
) -> str:
    """``[before ->] w (wait_event) -> t (transform of w's output)``."""
    wf_id = f"sig-wf-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"name": name, "timeout_seconds": timeout_seconds}
    if key is not None:
        config["correlation_key"] = key
    wait: dict[str, Any] = {"id": "w", "type": "wait_event", "config": config}
    if retry is not None:
        wait["retry"] = retry
    nodes = [wait, {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "nodes.w"}}]
    if before is not None:
        nodes.insert(0, before)
        wait["depends_on"] = [before["id"]]
    engine.register({"id": wf_id, "nodes": nodes})
    return wf_id


def start(engine: EngineProcess, wf_id: str, input_data: Any = None) -> str:
    status, body = engine.start_execution(wf_id, input_data or {"order": "none"})
    assert status == 202, body
    return str(body["id"])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def waiting(engine: EngineProcess, execution_id: str, node_id: str = "w") -> dict[str, Any]:
    """The run's body once ``node_id`` waits (running): proof that it waits for its signal."""

    def check() -> dict[str, Any] | None:
        body = engine.get(execution_id)
        return body if body["nodes"][node_id]["status"] == "running" else None

    body: dict[str, Any] = wait_for(check, 60, f"{execution_id}: node {node_id} waiting")
    return body


def events(engine: EngineProcess, execution_id: str) -> list[dict[str, Any]]:
    status, body = call("GET", f"{engine.url}/api/executions/{execution_id}/events")
    assert status == 200, body
    return list(body["events"])


def signal(
    engine: EngineProcess, execution_id: str, name: str, payload: Any, signal_id: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if signal_id is not None:
        headers["Idempotency-Key"] = signal_id
    return call("POST", f"{engine.url}/api/executions/{execution_id}/events/{name}", payload, headers=headers)


def broadcast(engine: EngineProcess, name: str, body: Any) -> tuple[int, Any]:
    return call("POST", f"{engine.url}/api/events/{name}", body)


async def produce(engine: EngineProcess, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(engine.settings().topic(topic_names.SIGNALS), value, key=key)
    finally:
        await producer.stop()


def test_a_signal_by_run_id_completes_the_waiting_node_with_its_payload(engine: EngineProcess) -> None:
    wf_id = waiting_workflow(engine)
    execution_id = start(engine, wf_id, {"order": "o-1"})
    body = waiting(engine, execution_id)
    assert body["nodes"]["t"]["status"] == "pending"
    status, answer = signal(engine, execution_id, "approved", {"by": "ann", "amount": 3})
    assert status == 202, answer
    assert (answer["execution_id"], answer["name"], answer["status"]) == (
        execution_id,
        "approved",
        "accepted",
    )
    done = engine.wait_status(execution_id)
    assert done["status"] == "success", done
    assert done["nodes"]["w"]["output"] == {"by": "ann", "amount": 3}
    assert done["nodes"]["t"]["output"] == {"by": "ann", "amount": 3}
    types = [e["type"] for e in events(engine, execution_id)]
    assert types.count("signal_received") == 1
    started = next(
        e for e in events(engine, execution_id) if e["type"] == "node_started" and e["node_id"] == "w"
    )
    assert (started["dispatch"], started["correlation_key"]) == ("signal", "o-1")


def test_a_duplicate_signal_id_counts_once(engine: EngineProcess) -> None:
    """Two nodes wait on the same name one after the other: the second send of an id the first
    node took does not complete the second node; a new id does."""
    wf_id = f"sig-dup-{uuid.uuid4().hex[:8]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "w1", "type": "wait_event", "config": {"name": "step", "timeout_seconds": 120}},
                {
                    "id": "w2",
                    "type": "wait_event",
                    "depends_on": ["w1"],
                    "config": {"name": "step", "timeout_seconds": 120},
                },
            ],
        }
    )
    execution_id = start(engine, wf_id)
    waiting(engine, execution_id, "w1")
    assert signal(engine, execution_id, "step", {"n": 1}, "step-1")[0] == 202
    waiting(engine, execution_id, "w2")
    assert signal(engine, execution_id, "step", {"n": 1}, "step-1")[0] == 202  # a client's retry
    # the duplicate is ignored: w2 still waits once the run has seen it (its events say so)
    time.sleep(1.0)
    body = engine.get(execution_id)
    assert body["status"] == "running" and body["nodes"]["w2"]["status"] == "running", body
    assert signal(engine, execution_id, "step", {"n": 2}, "step-2")[0] == 202
    done = engine.wait_status(execution_id)
    assert done["status"] == "success", done
    assert (done["nodes"]["w1"]["output"], done["nodes"]["w2"]["output"]) == ({"n": 1}, {"n": 2})
    received = [e["signal"]["id"] for e in events(engine, execution_id) if e["type"] == "signal_received"]
    assert received == ["step-1", "step-2"]


def test_a_signal_that_comes_before_the_node_waits_is_kept_for_it(engine: EngineProcess) -> None:
    wf_id = waiting_workflow(engine, before={"id": "d", "type": "wait", "config": {"seconds": 3}})
    execution_id = start(engine, wf_id)
    status, answer = signal(engine, execution_id, "approved", ["early"])
    assert status == 202, answer
    done = engine.wait_status(execution_id)
    assert done["status"] == "success", done
    assert done["nodes"]["w"]["output"] == ["early"]
    log = events(engine, execution_id)
    received = next(e["seq"] for e in log if e["type"] == "signal_received")
    waited = next(e["seq"] for e in log if e["type"] == "node_started" and e["node_id"] == "w")
    assert received < waited, "the signal came before the node waited"
    taken = [e for e in log if e["type"] == "node_succeeded" and e["node_id"] == "w"]
    assert len(taken) == 1 and taken[0]["signal"]["name"] == "approved"


def test_a_broadcast_reaches_every_run_waiting_with_its_key_and_no_other(engine: EngineProcess) -> None:
    name = f"paid-{uuid.uuid4().hex[:6]}"
    wf_id = waiting_workflow(engine, name=name)
    a1, a2, b = (start(engine, wf_id, {"order": order}) for order in ("A", "A", "B"))
    for run in (a1, a2, b):
        waiting(engine, run)
    status, answer = broadcast(engine, name, {"correlation_key": "A", "payload": {"paid": True}})
    assert status == 202, answer
    assert (answer["matched"], answer["execution_ids"]) == (2, sorted([a1, a2]))
    for run in (a1, a2):
        done = engine.wait_status(run)
        assert (done["status"], done["nodes"]["w"]["output"]) == ("success", {"paid": True}), done
    time.sleep(0.5)
    assert engine.get(b)["nodes"]["w"]["status"] == "running"
    # no run waits with key C: the broadcast reaches nobody and is not kept
    status, answer = broadcast(engine, name, {"correlation_key": "C", "payload": 1})
    assert (status, answer["matched"], answer["execution_ids"]) == (202, 0, [])
    with Client(engine.url) as lf:  # the client's call, with the key as a string
        assert lf.broadcast_signal(name, "B", "b")["execution_ids"] == [b]
    assert engine.wait_status(b)["nodes"]["w"]["output"] == "b"


def test_signals_from_the_kafka_topic_by_run_and_by_key(engine: EngineProcess) -> None:
    name = f"shipped-{uuid.uuid4().hex[:6]}"
    wf_id = waiting_workflow(engine, name=name)
    by_id, by_key = start(engine, wf_id, {"order": "x"}), start(engine, wf_id, {"order": 7})
    by_avro = start(engine, wf_id, {"order": "avro"})
    for run in (by_id, by_key, by_avro):
        waiting(engine, run)
    avro = default_codec().encode(Signal(name=name, execution_id=by_avro, payload={"via": "avro"}, id="av-1"))
    records = [
        (
            by_id.encode(),
            json.dumps({"name": name, "execution_id": by_id, "payload": {"via": "kafka"}}).encode(),
        ),
        (b"any", json.dumps({"name": name, "correlation_key": 7, "payload": [7]}).encode()),
        (b"bad", b'{"name": "no correlation key or run"}'),
        (by_avro.encode(), avro),
    ]
    asyncio.run(produce(engine, records))
    assert engine.wait_status(by_id)["nodes"]["w"]["output"] == {"via": "kafka"}
    assert engine.wait_status(by_key)["nodes"]["w"]["output"] == [7]
    assert engine.wait_status(by_avro)["nodes"]["w"]["output"] == {"via": "avro"}
    ids = [e["signal"]["id"] for e in events(engine, by_key) if e["type"] == "signal_received"]
    assert len(ids) == 1 and ids[0].startswith("kafka-")
    # the record that is no signal went to the dead-letter topic
    wait_for(
        lambda: engine.metric_total("linkflow_dlq_messages_total") >= 1, 30, "the bad record dead-lettered"
    )


def test_kafka_signals_that_no_run_would_take_are_dead_lettered_with_why(engine: EngineProcess) -> None:
    """As the API answers 409: a signal for an ended run, or one whose name no wait_event node of
    the run waits on, goes to the dead-letter topic with the reason, not only to a log line (the
    ended run's), or into the run for ever (the unknown name's)."""
    name = f"paid-{uuid.uuid4().hex[:6]}"
    wf_id = waiting_workflow(engine, name=name)
    waits, ends = start(engine, wf_id), start(engine, wf_id)
    waiting(engine, waits)
    waiting(engine, ends)
    call("POST", f"{engine.url}/api/executions/{ends}/cancel")
    assert engine.wait_status(ends)["status"] == "cancelled"
    late = f"late-{uuid.uuid4().hex[:6]}".encode()
    typo = f"typo-{uuid.uuid4().hex[:6]}".encode()
    asyncio.run(
        produce(
            engine,
            [
                (late, json.dumps({"name": name, "execution_id": ends}).encode()),
                (typo, json.dumps({"name": "piad", "execution_id": waits}).encode()),
            ],
        )
    )
    reasons = wait_for(lambda: dead_letter_reasons(engine, {late, typo}), 30, "both dead-lettered")
    assert reasons[late] == f"execution '{ends}' already ended (cancelled)"
    assert reasons[typo].startswith(f"no wait_event node of workflow '{wf_id}' waits on signal 'piad'")
    assert engine.get(waits)["status"] == "running", "the run took nothing"
    call("POST", f"{engine.url}/api/executions/{waits}/cancel")


def dead_letter_reasons(engine: EngineProcess, keys: set[bytes]) -> dict[bytes, str] | None:
    """The reason of each dead letter keyed by one of ``keys``, once all are there (else None)."""
    records = asyncio.run(
        read_topic(engine.bootstrap, engine.settings().topic(topic_names.DLQ), partitions=1)
    )
    found = {r.key: dict(r.headers)["dlq_reason"].decode() for r in records if r.key in keys}
    return found if set(found) == keys else None


def test_a_wait_with_no_signal_fails_with_class_timeout_after_its_retries(engine: EngineProcess) -> None:
    retry = {"max_attempts": 2, "initial_delay_seconds": 0.1, "multiplier": 1.0, "max_delay_seconds": 1.0}
    wf_id = waiting_workflow(engine, timeout_seconds=1, retry=retry)
    execution_id = start(engine, wf_id)
    done = engine.wait_status(execution_id)
    assert done["status"] == "failed", done
    node = done["nodes"]["w"]
    assert (node["status"], node["attempts"], node["error"]["error_class"]) == ("failed", 2, "timeout")
    assert done["nodes"]["t"]["status"] == "skipped"
    status, answer = signal(engine, execution_id, "approved", {})
    assert status == 409, answer  # the run has ended


def test_bad_signals_and_wait_event_configs_are_4xx(engine: EngineProcess) -> None:
    for config, field in (
        ({"timeout_seconds": 5}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "a", "timeout_seconds": 0}, "timeout_seconds"),
        ({"name": "a", "timeout_seconds": "5"}, "timeout_seconds"),
        ({"name": "a", "correlation_key": "input.("}, "correlation_key"),
        ({"name": "a", "correlation_key": 5}, "correlation_key"),
        ({"name": "a", "seconds": 5}, "seconds"),
    ):
        wf = {
            "id": f"sig-bad-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "w", "type": "wait_event", "config": config}],
        }
        status, answer = call("POST", f"{engine.url}/api/workflows", wf)
        assert status == 400, (config, answer)
        assert field in answer["error"]["message"], (config, answer)
    assert signal(engine, "no-such-run", "approved", {})[0] == 404
    with Client(engine.url) as lf, pytest.raises(NotFound):
        lf.signal_execution("no-such-run", "approved")
    execution_id = start(engine, waiting_workflow(engine))
    waiting(engine, execution_id)
    status, answer = signal(engine, execution_id, "bad%20name!", {})
    assert status == 400 and "signal name" in answer["error"]["message"], answer
    status, answer = call(
        "POST", f"{engine.url}/api/executions/{execution_id}/events/approved", raw=b"{not json"
    )
    assert status == 400, answer
    status, answer = signal(engine, execution_id, "approved", {}, signal_id="has space")
    assert status == 400, answer
    # a name no wait_event node of the run waits on would be kept for ever, unseen: a 409 says so
    status, answer = signal(engine, execution_id, "aproved", {})
    assert status == 409, answer
    assert "waits on signal 'aproved'" in answer["error"]["message"], answer
    assert "'approved'" in answer["error"]["message"], "it names the signals the run takes"
    for body in ({"payload": 1}, {"correlation_key": {"a": 1}}, {"correlation_key": "k", "extra": 1}, [1]):
        status, answer = broadcast(engine, "approved", body)
        assert status == 400, (body, answer)
    status, answer = broadcast(engine, "bad%20name", {"correlation_key": "k"})
    assert status == 400, answer
    call("POST", f"{engine.url}/api/executions/{execution_id}/cancel")


def test_kill_9_while_a_run_waits_on_a_signal_then_deliver_after_restart(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory()
    wf_id = waiting_workflow(engine, timeout_seconds=600)
    execution_id = start(engine, wf_id, {"order": "k9"})
    body = waiting(engine, execution_id)
    # in flight when the kill strikes: the node waits, no signal was received, the run is open
    assert body["status"] == "running" and body["nodes"]["t"]["status"] == "pending"
    assert not [e for e in events(engine, execution_id) if e["type"] == "signal_received"]
    engine.kill()
    engine.start()
    assert engine.get(execution_id)["nodes"]["w"]["status"] == "running"
    # by correlation key: the restarted views know the run waits with it
    status, answer = broadcast(engine, "approved", {"correlation_key": "k9", "payload": {"after": "restart"}})
    assert (status, answer["execution_ids"]) == (202, [execution_id]), answer
    done = engine.wait_status(execution_id)
    assert done["status"] == "success", done
    assert done["nodes"]["w"]["output"] == {"after": "restart"}
    log = events(engine, execution_id)
    assert [e["type"] for e in log].count("execution_succeeded") == 1
    assert len([e for e in log if e["type"] == "node_succeeded" and e["node_id"] == "w"]) == 1
