"""Kafka producers as clients, and events read back, on a real engine and broker.

A plain aiokafka producer writes ``StartRequest`` records (Avro and JSON) to ``linkflow.start``
and ``ExecutionCommand`` records to ``linkflow.commands``; each run starts once (a record sent
twice, with an idempotency key or an explicit id, starts nothing more), bad records land in
``linkflow.dlq`` with the reason in a header, and a cancel by producing cancels. A run's events
come back over HTTP (``/events``, ``?as_of_seq=``) and from ``linkflow events tail``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis, now
from linkflow_stream.core.events import EventType
from linkflow_stream.core.idempotency import execution_ids
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, Priority
from linkflow_stream.core.start_request import Origin, StartRequest, position_id
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.dev.testing import ROOT, EngineProcess, call, read_events, read_topic
from linkflow_stream.kafka.codec import cloudevent_headers, default_codec
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.topics import execution_partitions

pytestmark = pytest.mark.e2e

CODEC = default_codec()


def doubling(workflow_id: str, factor: int = 2) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "nodes": [
            {"id": "double", "type": "transform", "config": {"expression": f"input.n * {factor}"}},
            {
                "id": "plus",
                "type": "transform",
                "depends_on": ["double"],
                "config": {"expression": "nodes.double + 1"},
            },
        ],
    }


async def produce(
    engine: EngineProcess, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> list[RecordMetadata]:
    """Send ``(key, value)`` records to the logical ``topic`` one by one, as any client would."""
    producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        return [
            await producer.send_and_wait(
                engine.settings().topic(topic), value, key=key, timestamp_ms=int(time.time() * 1000)
            )
            for key, value in records
        ]
    finally:
        await producer.stop()


def json_request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def metric(engine: EngineProcess, sample: str) -> float:
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{sample} "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def dead_letters(
    engine: EngineProcess, keys: set[bytes], within: float = 60
) -> dict[bytes, dict[str, str]]:
    """The headers of the dead letters whose key is in ``keys``, once all are there."""
    tp = TopicPartition(engine.settings().topic(topic_names.DLQ), 0)
    consumer = committed_reader(engine.bootstrap)
    await consumer.start()
    found: dict[bytes, dict[str, str]] = {}
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + within
        while set(found) != keys and time.monotonic() < deadline:
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if record.key in keys:
                    found[record.key] = {k: v.decode() for k, v in record.headers}
    finally:
        await consumer.stop()
    assert set(found) == keys, f"dead letters missing for {keys - set(found)}"
    return found


async def test_start_requests_from_a_producer_run_once_each(engine: EngineProcess) -> None:
    wf_id = f"kstart-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    key, given = f"order-{uuid.uuid4().hex[:6]}", f"run-{uuid.uuid4().hex[:8]}"
    duplicates_before = metric(engine, 'linkflow_start_requests_total{outcome="duplicate"}')
    avro = CODEC.encode(StartRequest(workflow_id=wf_id, input={"n": 1}))
    keyed = json_request(workflow_id=wf_id, input={"n": 2}, idempotency_key=key)
    explicit = json_request(workflow_id=wf_id, input={"n": 3}, execution_id=given, priority="high")
    # one Kafka key for all: one partition, read in this order
    sent = await produce(
        engine,
        topic_names.START,
        [(b"k", avro), (b"k", keyed), (b"k", keyed), (b"k", explicit), (b"k", explicit)],
    )
    plain_id = position_id(Origin(sent[0].topic, sent[0].partition, sent[0].offset, sent[0].timestamp))
    keyed_id = execution_ids("", key, from_millis(sent[1].timestamp))[0]  # the workflow has no team
    for execution_id, n in ((plain_id, 1), (keyed_id, 2), (given, 3)):
        done = engine.wait_status(execution_id)
        assert done["status"] == "success", done
        assert (done["nodes"]["double"]["output"], done["nodes"]["plus"]["output"]) == (2 * n, 2 * n + 1)
        assert done["input_data"] == {"n": n} and done["workflow_id"] == wf_id
    assert engine.get(given)["priority"] == "high"

    # the same records once more, after their runs ended: still nothing new starts
    await produce(engine, topic_names.START, [(b"k", keyed), (b"k", explicit)])
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    await produce(
        engine,
        topic_names.START,
        [(b"k", json_request(workflow_id=wf_id, input={"n": 0}, execution_id=marker))],
    )
    engine.wait_status(marker)  # read after the repeats, from the same partition

    status, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf_id}&limit=100")
    assert status == 200
    assert sorted(e["id"] for e in page["executions"]) == sorted([plain_id, keyed_id, given, marker])
    events = await read_events(engine.bootstrap, engine.settings().topic(topic_names.EVENTS))
    created = Counter(e.execution_id for e in events if e.type is EventType.EXECUTION_CREATED)
    assert [created[i] for i in (plain_id, keyed_id, given, marker)] == [1, 1, 1, 1]
    assert metric(engine, 'linkflow_start_requests_total{outcome="duplicate"}') - duplicates_before == 4


async def test_the_same_idempotency_key_over_http_and_kafka_names_one_run(engine: EngineProcess) -> None:
    wf_id = f"kstart-http-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    key = f"both-{uuid.uuid4().hex[:6]}"
    status, first = call(
        "POST",
        f"{engine.url}/api/executions?wait=30",
        {"workflow_id": wf_id, "input_data": {"n": 5}},
        {"Idempotency-Key": key},
    )
    assert status == 200 and first["status"] == "success", first
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    one = f"h-{uuid.uuid4().hex[:6]}".encode()  # one partition, read in order; its own dead letter
    sent = await produce(
        engine,
        topic_names.START,
        [
            (one, json_request(workflow_id=wf_id, input={"n": 5}, idempotency_key=key)),  # the same start
            (one, json_request(workflow_id=wf_id, input={"n": 6}, idempotency_key=key)),  # another input
            (one, json_request(workflow_id=wf_id, input={"n": 0}, execution_id=marker)),
        ],
    )
    engine.wait_status(marker)
    _, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf_id}&limit=100")
    assert sorted(e["id"] for e in page["executions"]) == sorted([first["id"], marker])
    # the key with another input is neither the first run nor dropped unseen: a dead letter says why
    letter = (await dead_letters(engine, {one}))[one]
    assert letter["dlq_reason"].startswith("conflict: its idempotency key or execution id names a run of"), (
        letter
    )
    assert letter["dlq_offset"] == str(sent[1].offset), "the other input's record, not the same start's"


async def test_bad_start_requests_go_to_the_dlq_with_the_reason(engine: EngineProcess) -> None:
    wf_id = f"kstart-bad-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    tag = uuid.uuid4().hex[:6]
    bad = {
        # a leading 0x00 reads as Confluent framing (ADR 0025): still no record, and it says why
        f"garbage-{tag}".encode(): (b"\x00\x01 not a start request", "decode: "),
        f"unknown-{tag}".encode(): (
            json_request(workflow_id=f"nope-{tag}", input={}),
            f"unknown_workflow: workflow 'nope-{tag}' is not registered",
        ),
        f"version-{tag}".encode(): (
            json_request(workflow_id=wf_id, workflow_version=9),
            f"unknown_workflow: workflow '{wf_id}' has no version 9",
        ),
        f"badid-{tag}".encode(): (
            json_request(workflow_id=wf_id, execution_id="no/slashes"),
            "validation: execution_id 'no/slashes'",
        ),
        f"field-{tag}".encode(): (
            json_request(workflow_id=wf_id, input_data={}),
            "decode: not a start request: input_data: Extra inputs are not permitted",
        ),
    }
    sent = await produce(engine, topic_names.START, [(k, v) for k, (v, _) in bad.items()])
    letters = await dead_letters(engine, set(bad))
    for (k, (_, reason)), meta in zip(bad.items(), sent, strict=True):
        headers = letters[k]
        assert headers["dlq_reason"].startswith(reason), headers
        assert (headers["dlq_topic"], headers["dlq_partition"], headers["dlq_offset"]) == (
            meta.topic,
            str(meta.partition),
            str(meta.offset),
        )
    _, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf_id}")
    assert page["executions"] == []


async def test_a_workflow_registered_a_moment_before_the_request_is_found(engine: EngineProcess) -> None:
    """Written straight to linkflow.workflows (as another instance would), so this engine's view
    has not read it when the request arrives: the intake syncs before it refuses."""
    wf_id = f"kstart-race-{uuid.uuid4().hex[:6]}"
    definitions = [
        WorkflowDefinition(
            id=wf_id,
            version=version,
            nodes=(
                NodeDefinition(id="double", type="transform", config={"expression": f"input.n * {factor}"}),
            ),
            created_at=now(),
        )
        for version, factor in ((1, 2), (2, 10))
    ]
    execution_id = f"race-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, acks="all")
    await producer.start()
    try:
        for wf in definitions:
            await producer.send_and_wait(
                engine.settings().topic(topic_names.WORKFLOWS),
                CODEC.encode(wf),
                key=wf_id.encode(),
                headers=cloudevent_headers("io.linkflow.workflow.registered", "/test", wf_id),
            )
        request = StartRequest(
            workflow_id=wf_id, workflow_version=1, input={"n": 4}, execution_id=execution_id
        )
        await producer.send_and_wait(engine.settings().topic(topic_names.START), CODEC.encode(request))
    finally:
        await producer.stop()
    done = engine.wait_status(execution_id)
    assert (done["status"], done["workflow_version"], done["nodes"]["double"]["output"]) == ("success", 1, 8)


async def test_a_cancel_produced_to_the_commands_topic_cancels_the_run(engine: EngineProcess) -> None:
    wf_id = f"kstart-cancel-{uuid.uuid4().hex[:6]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "w", "type": "wait", "config": {"seconds": 120}},
                {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "1"}},
            ],
        }
    )
    execution_id = f"cancel-{uuid.uuid4().hex[:8]}"
    await produce(
        engine, topic_names.START, [(b"c", json_request(workflow_id=wf_id, execution_id=execution_id))]
    )
    running = engine.wait_status(execution_id, ("running",))
    assert running["nodes"]["w"]["status"] == "running"
    command = ExecutionCommand(
        execution_id=execution_id, kind=CommandKind.CANCEL, reason="cancelled from Kafka"
    )
    await produce(engine, topic_names.COMMANDS, [(execution_id.encode(), CODEC.encode(command))])
    done = engine.wait_status(execution_id, timeout=30)
    assert done["status"] == "cancelled", done
    assert done["history"][-1]["reason"] == "cancelled from Kafka"
    assert done["nodes"]["w"]["status"] == "cancelled" and done["nodes"]["t"]["status"] != "success"


async def test_a_command_that_would_do_nothing_is_dead_lettered_with_why(engine: EngineProcess) -> None:
    """A cancel for a run that has not started and a set_timeout without its seconds used to be
    dropped (a metric, or the decider ignoring it): the producer now finds each on the DLQ."""
    wf_id = f"kcmd-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 120}}]})
    running_id = f"timeout-{uuid.uuid4().hex[:8]}"
    await produce(
        engine, topic_names.START, [(b"t", json_request(workflow_id=wf_id, execution_id=running_id))]
    )
    engine.wait_status(running_id, ("running",))
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    cancel = ExecutionCommand(execution_id=nobody, kind=CommandKind.CANCEL, reason="stop")
    no_seconds = CODEC.encode_dict(
        "io.linkflow.ExecutionCommand",
        {"execution_id": running_id, "kind": "set_timeout", "reason": None, "timer_id": None}
        | {"timeout_seconds": None, "due_at": None, "suspend_deadline": False, "signal": None},
    )
    await produce(
        engine,
        topic_names.COMMANDS,
        [(nobody.encode(), CODEC.encode(cancel)), (running_id.encode(), no_seconds)],
    )
    letters = await dead_letters(engine, {nobody.encode(), running_id.encode()})
    assert letters[nobody.encode()]["dlq_reason"].startswith(
        f"unknown_execution: no run '{nobody}' to cancel"
    )
    assert letters[nobody.encode()]["dlq_topic"] == engine.settings().topic(topic_names.COMMANDS)
    assert "a set_timeout command needs timeout_seconds" in letters[running_id.encode()]["dlq_reason"]
    status, body = call("GET", f"{engine.url}/api/executions/{running_id}")
    assert status == 200 and body["status"] == "running", body


async def test_a_cancel_read_before_its_runs_start_cancels_the_run_as_it_starts(
    engine: EngineProcess,
) -> None:
    """A parent's cancel of the child it just started goes straight to the command topic, while
    the child's start goes through the start intake: the cancel was read first, dead-lettered,
    and the child ran on (ADR 0055). Here a producer does the same by hand, in that order."""
    wf_id = f"kearly-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 120}}]})
    execution_id = f"early-{uuid.uuid4().hex[:8]}"
    cancel = ExecutionCommand(execution_id=execution_id, kind=CommandKind.CANCEL, reason="parent p ended")
    await produce(engine, topic_names.COMMANDS, [(execution_id.encode(), CODEC.encode(cancel))])
    letters = await dead_letters(engine, {execution_id.encode()})  # read, with no run to cancel yet
    reason = letters[execution_id.encode()]["dlq_reason"]
    assert reason.startswith(f"unknown_execution: no run '{execution_id}' to cancel"), reason
    assert "a run that starts there meanwhile is cancelled as it starts" in reason
    await produce(
        engine, topic_names.START, [(b"e", json_request(workflow_id=wf_id, execution_id=execution_id))]
    )
    done = engine.wait_status(execution_id, timeout=30)
    assert done["status"] == "cancelled", done
    assert done["history"][-1]["reason"] == "parent p ended"
    assert done["nodes"]["w"]["status"] != "success"


def test_a_runs_events_and_its_state_as_of_any_event(engine: EngineProcess) -> None:
    wf_id = f"events-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    status, done = engine.start_execution(wf_id, {"n": 4}, wait=30)
    assert status == 200 and done["status"] == "success", done
    url = f"{engine.url}/api/executions/{done['id']}"

    status, body = call("GET", f"{url}/events")
    assert status == 200, body
    events = body["events"]
    assert body["count"] == len(events) and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "execution_created" and events[0]["workflow"]["id"] == wf_id
    assert events[0]["input"] == {"n": 4}
    assert events[-1]["type"] == "execution_succeeded"
    assert all(e["execution_id"] == done["id"] for e in events)
    _, succeeded = call("GET", f"{url}/events?type=node_succeeded")
    assert [(e["node_id"], e["output"]) for e in succeeded["events"]] == [("double", 8), ("plus", 9)]
    _, started = call("GET", f"{url}/events?type=node_started")  # inline: one event a node (ADR 0056)
    assert started["events"] == succeeded["events"]
    assert {e["dispatch"] for e in started["events"]} == {"inline"}
    _, failed = call("GET", f"{url}/events?type=node_failed")
    assert failed["count"] == 0

    _, first = call("GET", f"{url}?as_of_seq=1")
    assert (first["status"], first["as_of_seq"], first["started_at"]) == ("pending", 1, None)
    assert {n["status"] for n in first["nodes"].values()} == {"pending"}
    after_double = next(e["seq"] for e in events if e["type"] == "node_succeeded")
    _, middle = call("GET", f"{url}?as_of_seq={after_double}")
    assert middle["status"] == "running" and middle["as_of_seq"] == after_double
    assert (middle["nodes"]["double"]["status"], middle["nodes"]["double"]["output"]) == ("success", 8)
    assert middle["nodes"]["plus"]["status"] == "pending"
    _, last = call("GET", f"{url}?as_of_seq={len(events)}")
    assert {k: v for k, v in last.items() if k != "as_of_seq"} == done

    for bad in ("0", "-1", "1.5", "abc", "", "9" * 40):
        status, body = call("GET", f"{url}?as_of_seq={bad}")
        assert (status, body["error"]["type"]) == (400, "validation"), (bad, body)
    status, body = call("GET", f"{url}?as_of_seq={len(events) + 1}")
    assert (status, body["error"]["type"]) == (404, "not_found"), body
    assert call("GET", f"{url}/events?type=nope")[0] == 400
    assert call("GET", f"{engine.url}/api/executions/exec_nope/events")[0] == 404
    assert call("GET", f"{engine.url}/api/executions/exec_nope?as_of_seq=1")[0] == 404


def tail_cli(engine: EngineProcess, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "linkflow_stream.cli", "events", "tail", *args],
        cwd=ROOT,
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_events_tail_prints_decoded_events_as_json_lines(engine: EngineProcess) -> None:
    wf_id = f"tail-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    _, done = engine.start_execution(wf_id, {"n": 1}, wait=30)
    assert done["status"] == "success", done
    run = tail_cli(engine, "--execution", done["id"])
    assert run[0]["type"] == "execution_created" and run[-1]["type"] == "execution_succeeded"
    assert [e["seq"] for e in run] == list(range(1, len(run) + 1))
    assert {e["execution_id"] for e in run} == {done["id"]}
    nodes = tail_cli(engine, "--execution", done["id"], "--type", "node_succeeded", "--type", "node_started")
    # two inline attempts, each one event that starts and ends it (ADR 0056), printed once
    assert [(e["type"], e["node_id"], e["dispatch"]) for e in nodes] == [
        ("node_succeeded", "double", "inline"),
        ("node_succeeded", "plus", "inline"),
    ]
    started = tail_cli(engine, "--execution", done["id"], "--type", "node_started")
    assert [e["node_id"] for e in started] == ["double", "plus"], "an inline attempt also counts as a start"
    assert tail_cli(engine, "--execution", done["id"], "--type", "node_failed") == []
    everything = tail_cli(engine, "--type", "execution_succeeded")
    assert done["id"] in {e["execution_id"] for e in everything}


def test_events_tail_follow_prints_new_events_until_interrupted(
    engine: EngineProcess, tmp_path: Path
) -> None:
    wf_id = f"follow-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    _, before = engine.start_execution(wf_id, {"n": 1}, wait=30)
    argv = [
        sys.executable,
        "-m",
        "linkflow_stream.cli",
        "events",
        "tail",
        "--follow",
        "--type",
        "execution_succeeded",
    ]
    seen: list[str] = []
    errors = tmp_path / "tail.stderr"
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            argv, cwd=ROOT, env=engine.env(), stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as proc,
    ):
        stdout = proc.stdout
        assert stdout is not None

        def read_lines() -> None:
            for line in stdout:
                seen.append(line)

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()

        def wait_for(execution_id: str) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(json.loads(line)["execution_id"] == execution_id for line in list(seen)):
                    return
                time.sleep(0.1)
            raise AssertionError(f"{execution_id} not followed; got {seen}; stderr: {errors.read_text()}")

        try:
            wait_for(before["id"])  # what was there already
            _, after = engine.start_execution(wf_id, {"n": 2}, wait=30)
            wait_for(after["id"])  # and what came after
            assert proc.poll() is None, "--follow keeps reading"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, errors.read_text()  # CI once took over 20 s under load
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5)
    assert all(json.loads(line)["type"] == "execution_succeeded" for line in seen)


def test_an_intake_killed_mid_stream_loses_and_repeats_no_start(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """Two engines share linkflow.start; one is killed (-9) while records keep coming. The other
    takes its partitions over from their committed positions: every record becomes one run."""
    a = engine_factory()
    b = a.sibling()
    b.start()
    try:
        wf_id = f"kstart-kill-{uuid.uuid4().hex[:6]}"
        a.register(doubling(wf_id))
        records = [(f"k{i}".encode(), json_request(workflow_id=wf_id, input={"n": i})) for i in range(80)]
        sent = asyncio.run(produce(a, topic_names.START, records[:40]))
        b.kill()
        sent += asyncio.run(produce(a, topic_names.START, records[40:]))
        ids = [position_id(Origin(m.topic, m.partition, m.offset, m.timestamp)) for m in sent]
        for n, execution_id in enumerate(ids):
            done = a.wait_status(execution_id, timeout=90)
            assert (done["status"], done["nodes"]["double"]["output"]) == ("success", 2 * n), done
        events = asyncio.run(read_events(a.bootstrap, a.settings().topic(topic_names.EVENTS)))
        created = Counter(e.execution_id for e in events if e.type is EventType.EXECUTION_CREATED)
        assert {created[i] for i in ids} == {1}
        _, page = call("GET", f"{a.url}/api/executions?workflow_id={wf_id}&limit=1000")
        assert page["count"] == len(ids) == 80
    finally:
        a.stop()


async def test_the_clients_kafka_start_names_the_run_it_starts(engine: EngineProcess) -> None:
    """``start_via_kafka`` returns the id the engine gives the run: the chosen one, or the one its
    record's place in the log fixes; a keyed start returns none (its team decides the id)."""
    from linkflow_stream.client import Client, NotFound, start_via_kafka

    wf_id = f"kclient-{uuid.uuid4().hex[:8]}"
    engine.register(doubling(wf_id))
    chosen = f"order-{uuid.uuid4().hex[:8]}"
    by_position = await start_via_kafka(engine.bootstrap, wf_id, {"n": 4}, topic_prefix=engine.prefix)
    named = await start_via_kafka(
        engine.bootstrap, wf_id, {"n": 5}, execution_id=chosen, priority="high", topic_prefix=engine.prefix
    )
    keyed = await start_via_kafka(
        engine.bootstrap, wf_id, {"n": 6}, idempotency_key="k-1", topic_prefix=engine.prefix
    )
    assert named == chosen and keyed is None and by_position is not None
    client = Client(engine.url)
    # as the README does, right after the send: the run may not be made yet, which is "not yet"
    run = await asyncio.to_thread(client.wait_for, by_position, 30, not_found_is_pending=True)
    assert (run["status"], run["nodes"]["plus"]["output"]) == ("success", 9), run
    named_run = engine.wait_status(named)
    assert (named_run["status"], named_run["nodes"]["plus"]["output"]) == ("success", 11), named_run
    assert client.get_execution(chosen)["priority"] == "high"
    with pytest.raises(NotFound):  # one that never comes is NotFound at the end of the wait
        await asyncio.to_thread(client.wait_for, "exec_never", 1, not_found_is_pending=True)


def cli_start(engine: EngineProcess, wf_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``linkflow executions start WF_ID --via kafka ARGS`` against ``engine``."""
    command = ["executions", "start", wf_id, "--via", "kafka", *args, "--url", engine.url]
    return subprocess.run(
        [sys.executable, "-m", "linkflow_stream.cli", *command],
        cwd=ROOT,
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_the_cli_starts_a_run_via_kafka_and_follows_it_over_http(engine: EngineProcess) -> None:
    wf_id = f"kcli-{uuid.uuid4().hex[:8]}"
    engine.register(doubling(wf_id))
    chosen = f"cli-{uuid.uuid4().hex[:8]}"
    done = cli_start(engine, wf_id, "--input", '{"n": 20}', "--execution-id", chosen, "--wait", "30")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert (run["id"], run["status"], run["nodes"]["plus"]["output"]) == (chosen, "success", 41)
    bad = cli_start(engine, wf_id, "--execution-id", "no spaces allowed")
    assert bad.returncode == 2 and "execution" in bad.stderr, (bad.returncode, bad.stderr)
    # the id again with another input: that start is dead-lettered, and the CLI must not print the
    # first run as if it were this one
    other = cli_start(engine, wf_id, "--input", '{"n": 99}', "--execution-id", chosen, "--wait", "30")
    assert other.returncode == 2 and "another start" in other.stderr, (other.returncode, other.stdout)
    assert other.stdout == ""
    # an idempotency key's run id is the engine's to derive: --wait cannot follow it, so says so
    keyed = cli_start(engine, wf_id, "--idempotency-key", "k-1", "--wait", "30")
    assert keyed.returncode == 2 and "--wait with --via kafka needs --execution-id" in keyed.stderr


async def test_every_version_is_a_record_of_its_own_and_outlives_a_restart(engine: EngineProcess) -> None:
    """ADR 0048: each version is keyed ``<id>@<version>`` (compaction keeps them all). A restarted
    engine holds only the latest definition, yet lists every version, serves ``?version=1`` and
    starts a run pinned to version 1, read back from the log."""
    wf_id = f"kstart-versions-{uuid.uuid4().hex[:6]}"
    for factor in (2, 10, 100):
        engine.register(doubling(wf_id, factor))
    records = await read_topic(engine.bootstrap, engine.settings().topic(topic_names.WORKFLOWS), partitions=1)
    assert [r.key for r in records if CODEC.decode(r.value, WorkflowDefinition).id == wf_id] == [
        f"{wf_id}@{v}".encode() for v in (1, 2, 3)
    ]
    engine.stop()
    engine.start()
    status, listing = call("GET", f"{engine.url}/api/workflows/{wf_id}/versions")
    assert status == 200 and listing["latest"] == 3
    assert [(v["version"], v["nodes"]) for v in listing["versions"]] == [(3, 2), (2, 2), (1, 2)]
    status, first = call("GET", f"{engine.url}/api/workflows/{wf_id}?version=1")
    assert status == 200 and first["version"] == 1
    assert first["nodes"][0]["config"]["expression"] == "input.n * 2"
    status, missing = call("GET", f"{engine.url}/api/workflows/{wf_id}?version=4")
    assert status == 404 and "no version 4" in missing["error"]["message"], missing
    execution_id = f"pinned-{uuid.uuid4().hex[:8]}"
    request = StartRequest(workflow_id=wf_id, workflow_version=1, input={"n": 4}, execution_id=execution_id)
    await produce(engine, topic_names.START, [(execution_id.encode(), CODEC.encode(request))])
    done = engine.wait_status(execution_id)
    assert (done["status"], done["workflow_version"], done["nodes"]["plus"]["output"]) == ("success", 1, 9)


async def test_no_lag_is_shown_for_the_markers_of_the_intakes_transactions(engine: EngineProcess) -> None:
    """The intake writes start requests in transactions, whose commit markers take offsets no
    record is at; the orchestrator commits the offset after the last record it decided, so the
    queue status counted each marker as lag, which never went back to 0 at idle."""
    wf_id = f"kstart-lag-{uuid.uuid4().hex[:6]}"
    engine.register(doubling(wf_id))
    marker = f"lag-{uuid.uuid4().hex[:8]}"
    await produce(
        engine,
        topic_names.START,
        [(b"lag", json_request(workflow_id=wf_id, input={"n": 1}, execution_id=marker))],
    )
    assert engine.wait_status(marker)["status"] == "success"
    topic = engine.settings().topic(topic_names.requests(Priority.NORMAL))
    reader = committed_reader(engine.bootstrap)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(execution_partitions())]
        ends = await reader.end_offsets(tps)
    finally:
        await reader.stop()
    assert sum(ends.values()) > 0, "the intake wrote to the request topic"
    body = engine.queue_status()
    assert body["consumer_lag"] == 0, body
