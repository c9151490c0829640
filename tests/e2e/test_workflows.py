"""Workflows end to end through the HTTP API of a real engine on a real broker."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from linkflow_stream.dev.testing import ROOT, EngineProcess, TargetServer, call, read_events, read_topic

pytestmark = pytest.mark.e2e


def wid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run(engine: EngineProcess, workflow: dict[str, Any], input_data: Any = None, **kw: Any) -> dict[str, Any]:
    engine.register(workflow)
    status, body = engine.start_execution(workflow["id"], input_data, **kw)
    assert status == 202, body
    assert body["status"] == "pending"
    return engine.wait_status(body["id"])


def test_fan_out_condition_and_join(engine: EngineProcess) -> None:
    wf = {
        "id": wid("diamond"),
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "{'n': input.n}"}},
            {
                "id": "left",
                "type": "transform",
                "depends_on": ["a"],
                "config": {"expression": "nodes.a.n * 2"},
            },
            {
                "id": "right",
                "type": "transform",
                "depends_on": ["a"],
                "config": {"expression": "nodes.a.n + 1"},
            },
            {
                "id": "c",
                "type": "condition",
                "depends_on": ["left"],
                "config": {"expression": "nodes.left > 10"},
            },
            {"id": "big", "type": "transform", "depends_on": ["c:true"], "config": {"expression": "'big'"}},
            {
                "id": "small",
                "type": "transform",
                "depends_on": ["c:false"],
                "config": {"expression": "'small'"},
            },
            {"id": "after_big", "type": "transform", "depends_on": ["big"], "config": {"expression": "'x'"}},
            {
                "id": "join",
                "type": "transform",
                "depends_on": ["right", "big", "small"],
                "config": {"expression": "{'r': nodes.right, 'big': nodes.big, 'small': nodes.small}"},
            },
        ],
    }
    done = run(engine, wf, {"n": 3})
    nodes = done["nodes"]
    assert done["status"] == "success"
    assert nodes["left"]["output"] == 6 and nodes["right"]["output"] == 4
    assert nodes["c"]["output"] is False
    assert nodes["big"]["status"] == "skipped"
    assert nodes["after_big"]["status"] == "skipped", "a skip propagates to nodes with no other path"
    assert nodes["small"]["output"] == "small"
    assert nodes["join"]["output"] == {"r": 4, "small": "small"}, "the join ran after all non-skipped deps"
    assert [(h["from"], h["to"]) for h in done["history"]] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "success"),
    ]
    assert done["workflow_version"] == 1 and done["input_data"] == {"n": 3}

    big = run(engine, wf, {"n": 30})
    assert big["nodes"]["big"]["output"] == "big" and big["nodes"]["small"]["status"] == "skipped"
    assert big["nodes"]["after_big"]["status"] == "success"


def test_parallel_waits_overlap(engine: EngineProcess) -> None:
    wf = {
        "id": wid("waits"),
        "nodes": [
            {"id": "w1", "type": "wait", "config": {"seconds": 1.5}},
            {"id": "w2", "type": "wait", "config": {"seconds": 1.5}},
            {
                "id": "end",
                "type": "transform",
                "depends_on": ["w1", "w2"],
                "config": {"expression": "'done'"},
            },
        ],
    }
    done = run(engine, wf)
    w1, w2 = done["nodes"]["w1"], done["nodes"]["w2"]
    assert done["status"] == "success"
    # Both waits run at the same time: each started before the other finished.
    assert ts(w1["started_at"]) < ts(w2["finished_at"]) and ts(w2["started_at"]) < ts(w1["finished_at"])
    total = (ts(done["finished_at"]) - ts(done["started_at"])).total_seconds()
    assert 1.5 <= total < 2.9, f"two overlapping 1.5 s waits took {total} s"


def test_http_node_calls_a_real_server(engine: EngineProcess, target: TargetServer) -> None:
    wf = {
        "id": wid("http"),
        "nodes": [
            {
                "id": "h",
                "type": "http",
                "config": {
                    "method": "POST",
                    "url": f"{target.url}/echo",
                    "headers": {"X-Test": "yes"},
                    "json": {"hello": "world"},
                },
            },
            {
                "id": "t",
                "type": "transform",
                "depends_on": ["h"],
                "config": {"expression": "nodes.h.body.echo.hello"},
            },
        ],
    }
    done = run(engine, wf)
    assert done["status"] == "success", done
    assert done["nodes"]["h"]["output"]["status"] == 200
    assert done["nodes"]["t"]["output"] == "world"
    hit = next(r for r in target.hits("/echo") if r["headers"].get("X-Test") == "yes")
    assert hit["headers"]["Idempotency-Key"] == f"{done['id']}/h/1"


def test_http_error_status_fails_the_execution(engine: EngineProcess, target: TargetServer) -> None:
    wf = {
        "id": wid("http404"),
        "nodes": [
            {"id": "h", "type": "http", "config": {"url": f"{target.url}/status/404"}},
            {"id": "after", "type": "transform", "depends_on": ["h"], "config": {"expression": "1"}},
        ],
    }
    done = run(engine, wf)
    assert done["status"] == "failed"
    assert done["nodes"]["h"]["status"] == "failed"
    assert done["nodes"]["h"]["error"]["error_class"] == "http_4xx"
    assert done["nodes"]["after"]["status"] == "skipped"
    assert "node h failed" in done["history"][-1]["reason"]


def test_cancel_stops_waits_and_inflight_http(engine: EngineProcess, target: TargetServer) -> None:
    wf = {
        "id": wid("cancel"),
        "nodes": [
            {"id": "w", "type": "wait", "config": {"seconds": 60}},
            {"id": "h", "type": "http", "timeout_seconds": 60, "config": {"url": f"{target.url}/slow?s=20"}},
            {"id": "after", "type": "transform", "depends_on": ["w", "h"], "config": {"expression": "1"}},
        ],
    }
    engine.register(wf)
    status, body = engine.start_execution(wf["id"])
    assert status == 202
    engine.wait_status(body["id"], ("running",))
    deadline = asyncio.run(asyncio.sleep(0.5))  # let the HTTP call reach the server
    assert deadline is None
    status, reply = call("POST", f"{engine.url}/api/executions/{body['id']}/cancel")
    assert status == 202, reply
    done = engine.wait_status(body["id"], timeout=5)
    assert done["status"] == "cancelled"
    assert {n["status"] for n in done["nodes"].values()} == {"cancelled"}
    status, reply = call("POST", f"{engine.url}/api/executions/{body['id']}/cancel")
    assert status == 409 and reply["error"]["type"] == "conflict"


def test_a_cancel_sent_right_after_the_start_is_never_lost(engine: EngineProcess) -> None:
    """Starts and commands travel on different topics; a cancel decided before its run's start
    would find no run. The API sends a command only once the run has started."""
    wf = {"id": wid("cancel-now"), "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 30}}]}
    engine.register(wf)
    ids = []
    for _ in range(10):
        status, body = engine.start_execution(wf["id"])
        assert status == 202, body
        status, cancelled = call("POST", f"{engine.url}/api/executions/{body['id']}/cancel")
        assert status == 202, cancelled
        ids.append(body["id"])
    for execution_id in ids:
        assert engine.wait_status(execution_id, timeout=20)["status"] == "cancelled"


def test_wait_query_returns_the_finished_execution(engine: EngineProcess) -> None:
    wf = {
        "id": wid("sync"),
        "nodes": [{"id": "a", "type": "transform", "config": {"expression": "input.x + 1"}}],
    }
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], {"x": 41}, wait=10)
    assert status == 200, body
    assert body["status"] == "success" and body["nodes"]["a"]["output"] == 42
    slow = {"id": wid("sync-slow"), "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 5}}]}
    engine.register(slow)
    status, body = engine.start_execution(slow["id"], wait=3)
    # a wait that runs out says where the run is by then, not the "pending" it was when accepted
    # (it starts in milliseconds; 3 s leaves room on a loaded machine)
    assert status == 202 and body["status"] == "running", body


def test_a_run_started_over_http_gets_a_time_ordered_id(engine: EngineProcess) -> None:
    """ADR 0073: a UUIDv7 whose time is the request's, so ids made later sort later (the read
    model's keys then grow at their right edge); ``exec_`` and 32 hex digits, as before."""
    wf = {"id": wid("ids"), "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]}
    engine.register(wf)
    ids = []
    for _ in range(3):
        before = time.time_ns() // 1_000_000
        status, body = engine.start_execution(wf["id"])
        after = time.time_ns() // 1_000_000
        assert status == 202, body
        assert re.fullmatch(r"exec_[0-9a-f]{32}", body["id"]), body["id"]
        as_uuid = uuid.UUID(body["id"].removeprefix("exec_"))
        assert as_uuid.version == 7 and as_uuid.variant == uuid.RFC_4122
        assert before <= as_uuid.int >> 80 <= after
        ids.append(body["id"])
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_priority_versions_and_listing(engine: EngineProcess) -> None:
    wf = {
        "id": wid("versions"),
        "nodes": [{"id": "a", "type": "transform", "config": {"expression": "'v1'"}}],
    }
    first_version = engine.register(wf)
    assert first_version == {"id": wf["id"], "version": 1, "webhook_token": first_version["webhook_token"]}
    _, first = engine.start_execution(wf["id"], priority="high", wait=10)
    wf["nodes"][0]["config"]["expression"] = "'v2'"
    assert engine.register(wf) == {"id": wf["id"], "version": 2}
    _, second = engine.start_execution(wf["id"], priority="low", wait=10)
    assert (first["priority"], first["workflow_version"], first["nodes"]["a"]["output"]) == ("high", 1, "v1")
    assert (second["priority"], second["workflow_version"], second["nodes"]["a"]["output"]) == (
        "low",
        2,
        "v2",
    )
    status, got = call("GET", f"{engine.url}/api/workflows/{wf['id']}")
    assert status == 200 and got["version"] == 2
    status, listing = call(
        "GET", f"{engine.url}/api/executions?workflow_id={wf['id']}&status=success&limit=1"
    )
    assert status == 200 and listing["count"] == 1 and listing["executions"][0]["id"] == second["id"]


def test_registering_the_latest_definition_again_makes_no_version(engine: EngineProcess) -> None:
    """Applying an unchanged file on every deploy must not pile up versions (each is kept for
    ever, ADR 0048); a change, or going back to an older definition, is a new version."""
    wf = {"id": wid("apply"), "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]}
    assert engine.register(wf)["version"] == 1
    status, again = call("POST", f"{engine.url}/api/workflows", wf)
    assert (status, again) == (200, {"id": wf["id"], "version": 1, "unchanged": True})
    changed = {**wf, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "2"}}]}
    assert engine.register(changed) == {"id": wf["id"], "version": 2}
    assert engine.register(wf) == {"id": wf["id"], "version": 3}, "back to version 1's definition"
    status, text = call("POST", f"{engine.url}/api/workflows", {**wf, "timeout_seconds": "60"})
    assert status == 400, text  # a number written as text is not one (ADR 0053): no version made
    assert "timeout_seconds: Input should be a valid number" in text["error"]["message"]
    status, typed = call("POST", f"{engine.url}/api/workflows", {**wf, "timeout_seconds": 60})
    assert (status, typed["version"]) == (201, 4)
    status, listing = call("GET", f"{engine.url}/api/workflows/{wf['id']}/versions")
    assert status == 200 and [v["version"] for v in listing["versions"]] == [4, 3, 2, 1]
    records = asyncio.run(
        read_topic(engine.bootstrap, engine.settings().topic("linkflow.workflows"), partitions=1)
    )
    assert sum(r.key.startswith(f"{wf['id']}@".encode()) for r in records) == 4


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "code", "kind"),
    [
        ("POST", "/api/executions", b"{not json", {}, 400, "validation"),
        ("POST", "/api/executions", b'{"workflow_id": "no-such-workflow"}', {}, 404, "not_found"),
        ("POST", "/api/executions", b'{"workflow_id": "x"}', {"X-Priority": "urgent"}, 400, "validation"),
        ("POST", "/api/executions", b'["a list"]', {}, 400, "validation"),
        ("POST", "/api/executions?wait=abc", b'{"workflow_id": "x"}', {}, 400, "validation"),
        ("GET", "/api/executions/exec_missing", None, {}, 404, "not_found"),
        ("POST", "/api/executions/exec_missing/cancel", None, {}, 404, "not_found"),
        ("GET", "/api/executions?limit=0", None, {}, 400, "validation"),
        ("GET", "/api/executions?status=weird", None, {}, 400, "validation"),
        (
            "POST",
            "/api/workflows",
            b'{"id": "bad", "nodes": [{"id": "a", "type": "teleport"}]}',
            {},
            400,
            "validation",
        ),
        ("GET", "/api/workflows/none-such", None, {}, 404, "not_found"),
        ("GET", "/no/such/path", None, {}, 404, "not_found"),
        ("GET", "/api/executions?limit=%C2%B2", None, {}, 400, "validation"),  # "²" is a digit to isdigit()
        ("POST", "/api/workflows", b"[" * 100_000, {}, 400, "validation"),  # the parser's own recursion
        # half a surrogate pair: JSON allows the escape, UTF-8 (Avro, the store) does not
        ("POST", "/api/executions", b'{"workflow_id": "w", "input_data": "\\ud800"}', {}, 400, "validation"),
        ("POST", "/api/workflows", b'{"id": "w\\udfff", "nodes": []}', {}, 400, "validation"),
        # not JSON (RFC 8259), though Python's parser takes them: stored, they would come back as
        # bare tokens that break every JSON reader of the run (and of a page of runs)
        ("POST", "/api/executions", b'{"workflow_id": "w", "input_data": {"n": NaN}}', {}, 400, "validation"),
        (
            "POST",
            "/api/executions",
            b'{"workflow_id": "w", "input_data": [-Infinity]}',
            {},
            400,
            "validation",
        ),
        ("POST", "/api/executions", b'{"workflow_id": "w", "input_data": 1e999}', {}, 400, "validation"),
        (
            "POST",
            "/api/schedules",
            b'{"id": "s", "workflow_id": "w", "every_seconds": 60, "input_data": {"x": NaN}}',
            {},
            400,
            "validation",
        ),
        (
            "POST",
            "/api/executions",
            b'{"workflow_id": "w", "input_data": ' + b"[" * 65 + b"]" * 65 + b"}",
            {},
            400,
            "validation",
        ),
    ],
)
def test_errors_are_json_4xx(
    engine: EngineProcess,
    method: str,
    path: str,
    raw: bytes | None,
    headers: dict[str, str],
    code: int,
    kind: str,
) -> None:
    status, body = call(method, f"{engine.url}{path}", raw=raw, headers=headers)
    assert status == code, body
    assert body["error"]["type"] == kind and body["error"]["message"]
    assert call("GET", f"{engine.url}/healthz")[0] == 200, "the service keeps serving"


def test_workflow_validation_names_node_and_field(engine: EngineProcess) -> None:
    status, body = call(
        "POST",
        f"{engine.url}/api/workflows",
        {
            "id": wid("bad"),
            "nodes": [
                {"id": "a", "type": "transform", "config": {"expression": "{ broken"}},
                {"id": "b", "type": "transform", "depends_on": ["ghost"], "config": {"expression": "1"}},
            ],
        },
    )
    assert status == 400
    message = body["error"]["message"]
    assert "node 'a': config.expression: JSONata syntax error" in message
    assert "node 'b': depends_on: 'ghost' is not a node" in message


def test_a_task_node_naming_a_pool_without_a_topic_is_refused(engine: EngineProcess) -> None:
    """A pool is declared in topics/topics.toml; another would leave the node's task nowhere."""
    status, body = call(
        "POST",
        f"{engine.url}/api/workflows",
        {
            "id": wid("nopool"),
            "nodes": [
                {"id": "t", "type": "transform", "pool": "nope", "config": {"expression": "1"}},
                {
                    "id": "h",
                    "type": "http",
                    "pool": "nope",
                    "config": {"url": "https://example.com/", "method": "GET"},
                },
            ],
        },
    )
    assert status == 400, body
    message = body["error"]["message"]
    assert "node 'h': pool: no pool 'nope' (pools: default, gpu)" in message
    # an inline node runs in the orchestrator and uses no pool, but one it names must exist (a
    # typo would otherwise surface only once its type changes; ADR 0049)
    assert "node 't': pool: no pool 'nope' (pools: default, gpu)" in message


def test_every_transition_is_an_event_with_a_sequence(engine: EngineProcess) -> None:
    wf = {
        "id": wid("events"),
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "1"}},
            {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "2"}},
        ],
    }
    done = run(engine, wf)
    events = [
        e
        for e in asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}linkflow.events"))
        if e.execution_id == done["id"]
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # An inline node's attempt is one event, marked with where it ran (ADR 0056).
    assert [(e.type.value, e.node_id, e.dispatch) for e in events] == [
        ("execution_created", None, None),
        ("execution_started", None, None),
        ("node_succeeded", "a", "inline"),
        ("node_succeeded", "b", "inline"),
        ("execution_succeeded", None, None),
    ]


def test_with_merging_off_an_inline_attempt_is_a_start_and_an_end(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """``LINKFLOW_MERGE_INLINE_ATTEMPTS=false``: the log as releases before ADR 0056 wrote it,
    for a rolling upgrade whose older readers cannot fold the one-event form."""
    engine = engine_factory(LINKFLOW_MERGE_INLINE_ATTEMPTS="false")
    wf = {
        "id": wid("two-events"),
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "1"}},
            {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a + 1"}},
        ],
    }
    done = run(engine, wf)
    assert done["status"] == "success" and done["nodes"]["b"]["output"] == 2, done
    events = [
        e
        for e in asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}linkflow.events"))
        if e.execution_id == done["id"]
    ]
    assert [(e.type.value, e.node_id, e.dispatch) for e in events] == [
        ("execution_created", None, None),
        ("execution_started", None, None),
        ("node_started", "a", "inline"),
        ("node_succeeded", "a", None),
        ("node_started", "b", "inline"),
        ("node_succeeded", "b", None),
        ("execution_succeeded", None, None),
    ]


def test_garbage_input_goes_to_the_dead_letter_topic(engine: EngineProcess) -> None:
    async def produce_garbage_and_read_dlq() -> list[tuple[bytes | None, dict[str, bytes]]]:
        producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                f"{engine.prefix}linkflow.requests.normal", b"not avro", key=b"exec_garbage"
            )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            f"{engine.prefix}linkflow.dlq",
            bootstrap_servers=engine.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        try:
            found = []
            deadline = asyncio.get_running_loop().time() + 20
            while not found and asyncio.get_running_loop().time() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [(r.value, dict(r.headers)) for r in records if r.key == b"exec_garbage"]
            return found
        finally:
            await consumer.stop()

    found = asyncio.run(produce_garbage_and_read_dlq())
    assert found, "the undecodable request never reached linkflow.dlq"
    value, headers = found[0]
    assert value == b"not avro", "the original bytes are kept"
    assert headers["dlq_topic"] == f"{engine.prefix}linkflow.requests.normal".encode()
    assert b"single-object" in headers["dlq_reason"]
    wf = {"id": wid("after-dlq"), "nodes": [{"id": "a", "type": "transform", "config": {"expression": "7"}}]}
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], wait=10)
    assert status == 200 and body["status"] == "success", "the orchestrator keeps going after a poison input"


def test_a_poison_record_as_large_as_any_input_fits_the_dead_letter_topic(engine: EngineProcess) -> None:
    """Results may be 16 MiB; the DLQ takes such a record plus its headers, and the loop goes on."""
    big = b"\x00" * (15 * 1024 * 1024)

    async def produce_and_read() -> list[tuple[int, dict[str, bytes]]]:
        producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, max_request_size=17 * 1024 * 1024)
        await producer.start()
        try:
            await producer.send_and_wait(f"{engine.prefix}linkflow.results", big, key=b"exec_big_poison")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            f"{engine.prefix}linkflow.dlq",
            bootstrap_servers=engine.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level="read_committed",
            max_partition_fetch_bytes=17 * 1024 * 1024,
        )
        await consumer.start()
        try:
            found: list[tuple[int, dict[str, bytes]]] = []
            deadline = asyncio.get_running_loop().time() + 30
            while not found and asyncio.get_running_loop().time() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [
                        (len(r.value or b""), dict(r.headers)) for r in records if r.key == b"exec_big_poison"
                    ]
            return found
        finally:
            await consumer.stop()

    found = asyncio.run(produce_and_read())
    assert found, "the large poison record never reached linkflow.dlq"
    size, headers = found[0]
    assert size == len(big)
    assert headers["dlq_topic"] == f"{engine.prefix}linkflow.results".encode()
    wf = {"id": wid("after-big"), "nodes": [{"id": "a", "type": "transform", "config": {"expression": "7"}}]}
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], wait=10)
    assert status == 200 and body["status"] == "success", "the orchestrator keeps going after it"


def test_metrics_use_the_seed_names(engine: EngineProcess) -> None:
    wf = {"id": wid("metrics"), "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]}
    engine.register(wf)
    status, _ = engine.start_execution(wf["id"], wait=10)
    assert status == 200
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert f'linkflow_executions_started_total{{priority="normal",workflow_id="{wf["id"]}"}} 1.0' in text
    assert (
        f'linkflow_execution_duration_seconds_count{{status="success",workflow_id="{wf["id"]}"}} 1.0' in text
    )
    assert "linkflow_executions_active " in text
    assert 'linkflow_node_executions_total{node_type="transform",outcome="success"}' in text
    # the exactly-once runtime's own health: no input skipped, no partition lost, no abort here
    assert "# TYPE linkflow_input_offset_gaps_total counter" in text
    assert "linkflow_orchestrator_fenced_total 0.0" in text
    assert "linkflow_orchestrator_transaction_seconds_count" in text
    assert 'linkflow_queue_depth{priority="high"}' in text


def test_an_output_too_large_for_a_record_fails_the_node_visibly(
    engine: EngineProcess, target: TargetServer
) -> None:
    wf = {
        "id": wid("too-big"),
        "nodes": [
            {"id": "h", "type": "http", "config": {"url": f"{target.url}/big?n={3 * 1024 * 1024}"}},
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=30)
    assert status == 200, done
    assert done["status"] == "failed"
    error = done["nodes"]["h"]["error"]
    assert error["error_class"] == "resource_limit"
    assert done["nodes"]["h"]["attempts"] == 1, "a size failure is not retried through leases"

    wf = {
        "id": wid("too-big-code"),
        "nodes": [
            {
                "id": "c",
                "type": "code",
                "config": {"source": "def main(data):\n    return 'x' * 2_000_000\n"},
            },
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=30)
    assert status == 200, done
    error = done["nodes"]["c"]["error"]
    assert (done["status"], error["error_class"]) == ("failed", "resource_limit")
    assert "LINKFLOW_NODE_OUTPUT_MAX_BYTES" in error["message"]


def test_execution_metrics_show_attempts_timings_and_usage(
    engine: EngineProcess, target: TargetServer
) -> None:
    wf = {
        "id": wid("metrics-one"),
        "nodes": [
            {"id": "h", "type": "http", "config": {"url": f"{target.url}/big?n=2048"}},
            {"id": "t", "type": "transform", "depends_on": ["h"], "config": {"expression": "nodes.h.status"}},
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=20)
    assert status == 200 and done["status"] == "success"
    status, metrics = call("GET", f"{engine.url}/api/executions/{done['id']}/metrics")
    assert status == 200, metrics
    assert (metrics["status"], metrics["attempts"], metrics["retries"]) == ("success", 2, 0)
    assert metrics["usage"]["response_bytes"] == 2048
    assert metrics["nodes"]["h"]["usage"]["duration_us"] > 0
    assert metrics["duration_seconds"] >= metrics["nodes"]["h"]["duration_seconds"] >= 0
    status, body = call("GET", f"{engine.url}/api/executions/exec_nope/metrics")
    assert status == 404 and body["error"]["type"] == "not_found"


def test_setting_a_timeout_on_a_running_execution(engine: EngineProcess) -> None:
    wf = {"id": wid("timeout"), "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 60}}]}
    engine.register(wf)
    _, body = engine.start_execution(wf["id"])
    running = engine.wait_status(body["id"], ("running",))
    assert running["deadline_at"] is None
    url = f"{engine.url}/api/executions/{body['id']}/timeout"
    status, reply = call("PUT", url, {"timeout_seconds": 300})
    assert status == 202, reply
    until = time.monotonic() + 10
    while (deadline := engine.get(body["id"])["deadline_at"]) is None and time.monotonic() < until:
        time.sleep(0.05)
    assert deadline is not None
    assert (ts(deadline) - ts(running["started_at"])).total_seconds() == 300
    for bad in ({"timeout_seconds": 0}, {"timeout_seconds": "5"}, {"seconds": 5}, [5]):
        status, reply = call("PUT", url, bad)
        assert status == 400 and reply["error"]["type"] == "validation", bad
    status, _ = call("PUT", url, {"timeout_seconds": 2})
    assert status == 202
    done = engine.wait_status(body["id"], timeout=10)
    assert done["status"] == "failed"
    assert "timed out" in done["history"][-1]["reason"]
    assert done["nodes"]["w"]["status"] == "cancelled"
    assert call("PUT", url, {"timeout_seconds": 10})[0] == 409
    assert call("PUT", f"{engine.url}/api/executions/exec_nope/timeout", {"timeout_seconds": 10})[0] == 404


def test_the_engine_runs_on_uvloop(engine: EngineProcess) -> None:
    """ADR 0062: every e2e test of this module ran on it (asyncio's loop: LINKFLOW_EVENT_LOOP)."""
    assert "event loop uvloop" in engine.log_path.read_text(), engine.log_tail()


def test_queue_status_counts_by_priority(engine: EngineProcess) -> None:
    wf = {"id": wid("queue"), "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 30}}]}
    engine.register(wf)
    _, before = call("GET", f"{engine.url}/api/admin/queue/status")
    ids = [engine.start_execution(wf["id"], priority=p)[1]["id"] for p in ("high", "high", "low")]
    for execution_id in ids:
        engine.wait_status(execution_id, ("running",))
    body = engine.queue_status()
    assert body["order"] == ["high", "normal", "low"]
    assert body["queues"]["high"]["running"] - before["queues"]["high"]["running"] == 2
    assert body["queues"]["low"]["running"] - before["queues"]["low"]["running"] == 1
    assert body["queues"]["high"]["topic"].endswith("linkflow.requests.high")
    # every start is decided and its position committed with its events; the group's offsets
    # follow within a moment: nothing lags
    assert [q["consumer_lag"] for q in body["queues"].values()] == [0, 0, 0], body
    for execution_id in ids:
        assert call("POST", f"{engine.url}/api/executions/{execution_id}/cancel")[0] == 202


def test_cost_of_an_execution_and_the_monthly_report(engine: EngineProcess, target: TargetServer) -> None:
    wf = {
        "id": wid("costly"),
        "nodes": [
            {"id": "h", "type": "http", "config": {"url": f"{target.url}/big?n=50000"}},
            {"id": "t", "type": "transform", "depends_on": ["h"], "config": {"expression": "nodes.h.status"}},
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=20)
    assert status == 200 and done["status"] == "success"
    status, cost = call("GET", f"{engine.url}/api/executions/{done['id']}/cost")
    assert status == 200, cost
    assert cost["network_bytes"] >= 50000 and cost["attempts"] == 2
    assert cost["total_cost"] == pytest.approx(sum(cost["breakdown"].values()), abs=1e-8)
    assert cost["total_cost"] > 0 and cost["currency"] == "USD"
    status, month = call("GET", f"{engine.url}/api/costs/report?period=month")
    assert status == 200
    row = next(w for w in month["workflows"] if w["workflow_id"] == wf["id"])
    assert row["executions"] == 1 and row["total_cost"] == pytest.approx(cost["total_cost"])
    assert call("GET", f"{engine.url}/api/costs/report?period=fortnight")[0] == 400
    assert call("GET", f"{engine.url}/api/costs/report?group_by=planet")[0] == 400
    engine.register({**wf, "team": "growth"})
    engine.start_execution(wf["id"], wait=20)
    status, teams = call("GET", f"{engine.url}/api/costs/report?period=month&group_by=team")
    assert status == 200
    growth = next(t for t in teams["teams"] if t["team"] == "growth")
    assert growth["executions"] == 1, "only the run of the version that names the team"
    assert call("GET", f"{engine.url}/api/executions/exec_nope/cost")[0] == 404


def test_recover_dispatches_a_stuck_task_again_and_checkpoint_reports(
    engine: EngineProcess, target: TargetServer
) -> None:
    wf = {
        "id": wid("recover"),
        "nodes": [
            {"id": "h", "type": "http", "timeout_seconds": 30, "config": {"url": f"{target.url}/slow?s=4"}},
        ],
    }
    engine.register(wf)
    _, body = engine.start_execution(wf["id"])
    engine.wait_status(body["id"], ("running",))
    status, point = call("POST", f"{engine.url}/api/executions/{body['id']}/checkpoint")
    assert status == 200 and point["status"] == "running" and point["seq"] >= 3
    status, reply = call("POST", f"{engine.url}/api/executions/{body['id']}/recover")
    assert status == 202, reply
    done = engine.wait_status(body["id"], timeout=30)
    assert done["status"] == "success" and done["nodes"]["h"]["attempts"] == 2
    keys = {
        r["headers"]["Idempotency-Key"]
        for r in target.hits("/slow")
        if body["id"] in r["headers"]["Idempotency-Key"]
    }
    assert keys == {f"{body['id']}/h/1", f"{body['id']}/h/2"}
    status, point = call("POST", f"{engine.url}/api/executions/{body['id']}/checkpoint")
    assert (status, point["status"], point["seq"]) == (200, "success", done_seq(engine, body["id"]))
    assert call("POST", f"{engine.url}/api/executions/{body['id']}/recover")[0] == 409


def done_seq(engine: EngineProcess, execution_id: str) -> int:
    _, metrics = call("GET", f"{engine.url}/api/executions/{execution_id}/metrics")
    return int(metrics["events"])


def test_workflow_retry_policy_and_its_dry_run(engine: EngineProcess, target: TargetServer) -> None:
    wf = {
        "id": wid("retrying"),
        "nodes": [{"id": "h", "type": "http", "config": {"url": f"{target.url}/status/503"}}],
    }
    engine.register(wf)
    url = f"{engine.url}/api/workflows/{wf['id']}/retry"
    status, body = call("PUT", url, {"strategy": "fixed", "max_attempts": 3, "initial_delay_seconds": 0.2})
    assert status == 200, body
    assert (body["version"], body["schedule_seconds"]) == (2, [0.2, 0.2])
    assert "unchanged" not in body
    # the same policy again (a deploy script setting it every time) makes no version
    status, again = call("PUT", url, {"strategy": "fixed", "initial_delay_seconds": 0.2, "max_attempts": 3})
    assert (status, again["version"], again.get("unchanged")) == (200, 2, True), again
    status, listing = call("GET", f"{engine.url}/api/workflows/{wf['id']}/versions")
    assert status == 200 and [v["version"] for v in listing["versions"]] == [2, 1]
    status, done = engine.start_execution(wf["id"], wait=20)
    assert status == 200 and done["status"] == "failed"
    assert (done["workflow_version"], done["nodes"]["h"]["attempts"]) == (2, 3)
    status, dry = call("POST", f"{engine.url}/api/executions/{done['id']}/test-retry")
    assert status == 200, dry
    node = dry["nodes"]["h"]
    assert (node["policy_source"], node["last_error"]["error_class"], node["would_retry"]) == (
        "workflow",
        "http_5xx",
        False,
    )
    assert "http_5xx" in dry["retryable_classes"] and "http_4xx" not in dry["retryable_classes"]
    for bad in ({"strategy": "random"}, {"max_attempts": 0}, ["x"], {"strategy": "fixed", "multiplier": 3}):
        assert call("PUT", url, bad)[0] == 400, bad
    assert call("PUT", f"{engine.url}/api/workflows/none-such/retry", {"max_attempts": 2})[0] == 404


def test_every_metric_the_grafana_dashboard_charts_is_exported(engine: EngineProcess) -> None:
    dashboard = (ROOT / "deploy" / "grafana" / "dashboards" / "linkflow.json").read_text()
    charted = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"linkflow_[a-z_]+", dashboard)}
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        exported = resp.read().decode()
    missing = sorted(
        name
        for name in charted
        if f"# TYPE {name} " not in exported and f"# TYPE {name.removesuffix('_total')} " not in exported
    )
    assert charted and not missing, f"charted but not exported: {missing}"
