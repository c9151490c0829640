"""Issue 3's acceptance: HTTP -> db -> transform -> condition -> code, with mapping between them,
through a running engine on the real broker, against a real HTTP server and a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from linkflow_stream.dev.testing import EngineProcess, TargetServer, call

pytestmark = pytest.mark.e2e


def test_all_five_node_types_chain_with_mapping(
    engine_factory: Callable[..., EngineProcess], target: TargetServer, tmp_path: Path
) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table orders (user_id integer, amount real)")
        conn.executemany("insert into orders values (?, ?)", [(7, 80.0), (7, 45.5), (8, 1.0)])
    engine = engine_factory(LINKFLOW_DATABASES=json.dumps({"shop": f"sqlite:///{db}"}))
    wf = {
        "id": f"chain-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {
                "id": "h",
                "type": "http",
                "config": {"method": "GET"},
                "input": {"url": f"'{target.url}/users/' & $string(input.user)"},
                "output": "{'user_id': $number($substringAfter(output.body.path, '/users/'))}",
            },
            {
                "id": "q",
                "type": "db",
                "depends_on": ["h"],
                "config": {
                    "connection": "shop",
                    "query": "select sum(amount) as total, count(*) as n from orders where user_id = :uid",
                },
                "input": {"params": "{'uid': nodes.h.user_id}"},
                "output": "output.rows[0]",
            },
            {
                "id": "t",
                "type": "transform",
                "depends_on": ["q"],
                "config": {
                    "expression": "{'total': nodes.q.total, 'orders': nodes.q.n, 'big': nodes.q.total > 100}"
                },
            },
            {"id": "c", "type": "condition", "depends_on": ["t"], "config": {"expression": "nodes.t.big"}},
            {
                "id": "code",
                "type": "code",
                "depends_on": ["c:true"],
                "config": {
                    "source": (
                        "def main(data):\n"
                        "    t = data['nodes']['t']\n"
                        "    print('computing the message')\n"
                        "    return {'message': f\"user {data['nodes']['h']['user_id']} spent {t['total']} "
                        "in {t['orders']} orders\"}\n"
                    )
                },
            },
            {
                "id": "small",
                "type": "transform",
                "depends_on": ["c:false"],
                "config": {"expression": "'small'"},
            },
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], {"user": 7}, wait=60)
    assert status == 200, done
    assert done["status"] == "success", json.dumps(done["nodes"], indent=1)
    nodes = done["nodes"]
    assert nodes["h"]["output"] == {"user_id": 7}
    assert nodes["q"]["output"] == {"total": 125.5, "n": 2}
    assert nodes["t"]["output"] == {"total": 125.5, "orders": 2, "big": True}
    assert nodes["code"]["output"] == {"message": "user 7 spent 125.5 in 2 orders"}
    assert nodes["small"]["status"] == "skipped"
    assert nodes["code"]["logs"] == {"stdout": "computing the message\n"}, "what the code printed is kept"
    assert nodes["code"]["usage"]["cpu_us"] > 0
    assert nodes["h"]["usage"]["response_bytes"] > 0

    status, low = engine.start_execution(wf["id"], {"user": 8}, wait=60)
    assert status == 200 and low["status"] == "success"
    assert low["nodes"]["code"]["status"] == "skipped" and low["nodes"]["small"]["output"] == "small"


def test_bad_config_is_refused_naming_node_and_field(engine: EngineProcess) -> None:
    status, body = call(
        "POST",
        f"{engine.url}/api/workflows",
        {
            "id": "bad-chain",
            "nodes": [
                {"id": "q", "type": "db", "config": {"connection": "nowhere", "query": "select 1"}},
                {"id": "code", "type": "code", "config": {"source": "def main(data):\n    return (\n"}},
                {"id": "h", "type": "http", "config": {"url": "ftp://example.org/"}},
            ],
        },
    )
    assert status == 400
    message = body["error"]["message"]
    assert "node 'q': config.connection" in message
    assert "node 'code': config.source" in message
    assert "node 'h': config.url" in message


def test_a_failing_code_node_keeps_its_output_and_traceback(engine: EngineProcess) -> None:
    wf = {
        "id": f"code-fail-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {
                "id": "c",
                "type": "code",
                "config": {"source": ("def main(data):\n    print('about to fail')\n    return 1 / 0\n")},
            }
        ],
    }
    engine.register(wf)
    status, done = engine.start_execution(wf["id"], wait=30)
    assert status == 200 and done["status"] == "failed", done
    node = done["nodes"]["c"]
    assert node["error"]["error_class"] == "code_error"
    assert "ZeroDivisionError" in node["error"]["message"]
    assert node["logs"]["stdout"] == "about to fail\n"
