"""An engine with ``LINKFLOW_SCHEMA_REGISTRY_URL`` (ADR 0025): it runs a workflow as ever, and
every record it wrote is in the Confluent wire format, under the topic-name strategy's subject,
and decodes with the schema the registry itself gives for its id."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import fastavro
import pytest

from linkflow_stream.dev.testing import EngineProcess, TargetServer, read_events, read_topic
from linkflow_stream.kafka.codecs import codec_for
from linkflow_stream.kafka.schema_ids import confluent_id
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
    for name in ("linkflow.events", "linkflow.requests.normal", "linkflow.tasks.default", "linkflow.results"):
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
    tasks = decoded["linkflow.tasks.default"]
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
