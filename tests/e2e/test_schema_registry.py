"""An engine with ``LINKFLOW_SCHEMA_REGISTRY_URL`` (ADR 0025): it runs a workflow as ever, and
every record it wrote is in the Confluent wire format, under the topic-name strategy's subject,
and decodes with the schema the registry itself gives for its id."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import fastavro
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from linkflow_stream.core.messages import StartExecution
from linkflow_stream.dev.broker import free_port
from linkflow_stream.dev.testing import EngineProcess, TargetServer, read_events, read_topic
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.codecs import codec_for
from linkflow_stream.kafka.schema_ids import confluent_header, confluent_id
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.e2e


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_an_engine_with_a_registry_writes_confluent_records_that_the_registry_decodes(
    engine_factory: Callable[..., EngineProcess], target: TargetServer, schema_registry: str
) -> None:
    engine = engine_factory(LINKFLOW_SCHEMA_REGISTRY_URL=schema_registry)
    wf = {
        "id": f"registry-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "h", "type": "http", "config": {"method": "GET", "url": f"{target.url}/users/7"}},
            {
                "id": "t",
                "type": "transform",
                "depends_on": ["h"],
                "config": {"expression": "{'path': nodes.h.body.path}"},
            },
        ],
    }
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], {"n": 1}, wait=60)
    assert status == 200, body
    assert body["status"] == "success", body
    assert body["nodes"]["t"]["output"] == {"path": "/users/7"}

    settings = Settings(
        bootstrap_servers=engine.bootstrap, topic_prefix=engine.prefix, schema_registry_url=schema_registry
    )
    subjects = set(get_json(f"{schema_registry}/subjects"))
    registry_schemas: dict[int, Any] = {}

    def registry_schema(schema_id: int) -> Any:
        if schema_id not in registry_schemas:
            text = get_json(f"{schema_registry}/schemas/ids/{schema_id}")["schema"]
            registry_schemas[schema_id] = fastavro.parse_schema(json.loads(text))
        return registry_schemas[schema_id]

    decoded: dict[str, list[dict[str, Any]]] = {}
    for name in (
        "linkflow.events",
        "linkflow.requests.normal",
        "linkflow.tasks.default.normal",
        "linkflow.results",
    ):
        topic = settings.topic(name)
        assert f"{topic}-value" in subjects
        latest = get_json(f"{schema_registry}/subjects/{topic}-value/versions/latest")
        records = asyncio.run(read_topic(engine.bootstrap, topic))
        assert records, name
        out = decoded.setdefault(name, [])
        for record in records:
            assert record.value is not None
            assert record.value[0] == 0, f"{name}: not the Confluent wire format"
            schema_id = confluent_id(record.value)
            assert schema_id == latest["id"]
            schema = registry_schema(schema_id)
            out.append(fastavro.schemaless_reader(io.BytesIO(record.value[5:]), schema, None))

    execution_id = body["id"]
    events = [e for e in decoded["linkflow.events"] if e["execution_id"] == execution_id]
    types = [e["type"] for e in events]
    assert (types[0], types[-1]) == ("execution_created", "execution_succeeded")
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    tasks = decoded["linkflow.tasks.default.normal"]
    assert any(r["execution_id"] == execution_id and r["node_id"] == "h" for r in tasks)
    assert any(r["execution_id"] == execution_id for r in decoded["linkflow.results"])

    # the engine's own codec reads them back the same (the read model did: the status above)
    async def read_back() -> list[str]:
        codec = codec_for(settings)
        try:
            mine = await read_events(engine.bootstrap, settings.topic("linkflow.events"), codec=codec)
        finally:
            await codec.close()
        return [e.type.value for e in mine if e.execution_id == execution_id]

    assert asyncio.run(read_back()) == [e["type"] for e in events]


class Outage:
    """A TCP relay from a loopback port to the registry that can be cut (listener and every open
    connection closed) and restored on the same port: the registry away and back, ids intact."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            # shutdown first: a close alone does not wake the thread blocked in accept(), which
            # could then still take one more connection and relay it (the registry not away at all)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


async def produce(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def dead_letters(bootstrap: str, topic: str, key: str, within: float) -> list[dict[str, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        found: list[dict[str, bytes]] = []
        deadline = asyncio.get_running_loop().time() + within
        while not found and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [dict(r.headers) for r in records if r.key == key.encode()]
        return found
    finally:
        await consumer.stop()


async def first_request(settings: Settings, schema_registry: str) -> StartExecution:
    """The first start request on ``linkflow.requests.normal``, as the engine wrote it."""
    codec = codec_for(settings.model_copy(update={"schema_registry_url": schema_registry}))
    try:
        records = await read_topic(settings.bootstrap_servers, settings.topic("linkflow.requests.normal"))
        await codec.learn([r.value for r in records])
        return codec.decode(records[0].value, StartExecution)
    finally:
        await codec.close()


def test_a_new_schema_id_while_the_registry_is_away_waits_and_runs_when_it_is_back(
    engine_factory: Callable[..., EngineProcess], schema_registry: str
) -> None:
    registry = urlparse(schema_registry)
    assert registry.port is not None
    outage = Outage(registry.port)
    outage.up()
    try:
        engine = engine_factory(
            LINKFLOW_SCHEMA_REGISTRY_URL=registry._replace(netloc=f"127.0.0.1:{outage.port}").geturl()
        )
        wf = {
            "id": f"outage-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "a", "type": "transform", "config": {"expression": "input.n * 2"}}],
        }
        engine.register(wf)
        status, first = engine.start_execution(wf["id"], {"n": 1}, wait=60)
        assert status == 200 and first["status"] == "success", first

        # A newer engine registers a newer StartExecution (one more field, with a default) and
        # writes with it; this engine has never seen that id.
        settings = Settings(bootstrap_servers=engine.bootstrap, topic_prefix=engine.prefix)
        topic = settings.topic("linkflow.requests.normal")
        newer = json.loads(default_codec().current.texts["io.linkflow.StartExecution"])
        newer["fields"].append({"name": "submitted_by", "type": "string", "default": ""})
        body = json.dumps({"schema": json.dumps(newer), "schemaType": "AVRO"}).encode()
        request = urllib.request.Request(
            f"{schema_registry}/subjects/{topic}-value/versions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            newer_id = json.loads(resp.read())["id"]
        execution_id = f"exec_{uuid.uuid4().hex}"
        earlier = asyncio.run(first_request(settings, schema_registry))
        record = earlier.model_copy(update={"execution_id": execution_id, "input": {"n": 21}}).model_dump()
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), {**record, "submitted_by": "newer"})
        value = confluent_header(newer_id) + buf.getvalue()

        outage.down()
        asyncio.run(produce(engine.bootstrap, topic, execution_id, value))
        # a record the registry has never heard of is unreadable: a dead letter, as ever
        unknown = f"exec_{uuid.uuid4().hex}"
        asyncio.run(produce(engine.bootstrap, topic, unknown, confluent_header(2**31 - 3) + buf.getvalue()))
        # while the registry is away the request is held: not dead-lettered, not dropped
        dlq = settings.topic("linkflow.dlq")
        assert not asyncio.run(dead_letters(engine.bootstrap, dlq, execution_id, 4))
        # the whole log: the dead letter's and the views' tracebacks can push the line out of a tail
        assert "schema ids not resolved" in engine.log_path.read_text(errors="replace")

        outage.up()
        done = engine.wait_status(execution_id, timeout=60)
        assert done["status"] == "success", done
        assert done["nodes"]["a"]["output"] == 42
        letters = asyncio.run(dead_letters(engine.bootstrap, dlq, unknown, 20))
        assert letters and b"is not known to the schema registry" in letters[0]["dlq_reason"]
    finally:
        outage.down()


def test_a_restarted_engine_restores_its_confluent_framed_state_and_finishes_the_run(
    engine_factory: Callable[..., EngineProcess], schema_registry: str
) -> None:
    engine = engine_factory(LINKFLOW_SCHEMA_REGISTRY_URL=schema_registry)
    wf = {
        "id": f"restart-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "input.n + 1"}},
            {"id": "w", "type": "wait", "depends_on": ["a"], "config": {"seconds": 3.0}},
            {"id": "b", "type": "transform", "depends_on": ["w"], "config": {"expression": "nodes.a * 10"}},
        ],
    }
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], {"n": 4})
    assert status == 202, body
    engine.wait_status(body["id"], ("running",))
    engine.stop()  # the run's state is on linkflow.state.executions, in the Confluent wire format
    engine.start()
    done = engine.wait_status(body["id"], timeout=60)
    assert done["status"] == "success", done
    assert done["nodes"]["b"]["output"] == 50

    settings = Settings(bootstrap_servers=engine.bootstrap, topic_prefix=engine.prefix)
    states = asyncio.run(read_topic(engine.bootstrap, settings.topic("linkflow.state.executions")))
    framed = [r.value for r in states if r.value is not None and r.key == body["id"].encode()]
    assert framed and all(v[0] == 0 for v in framed)
