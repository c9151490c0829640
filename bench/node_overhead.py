"""Benchmark: what each node type adds beyond its own work.

    python -m bench.node_overhead [--n 100]

For each type, a one-node workflow whose node does (almost) nothing runs N times, one at a time,
through ``POST /api/executions?wait=``. Overhead = end-to-end latency - the node's own duration
(its recorded started_at..finished_at). Inline types (transform, condition) record zero own time;
task types (http, db, code) pay two extra Kafka hops; wait pays a timer round trip.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import own_engine, percentile
from linkflow_stream.dev.testing import TargetServer, call, serve

NODES: dict[str, dict[str, Any]] = {
    "transform": {"type": "transform", "config": {"expression": "input.n + 1"}},
    "condition": {"type": "condition", "config": {"expression": "input.n > 0"}},
    "wait": {"type": "wait", "config": {"seconds": 0}},
    "http": {"type": "http", "config": {"url": "{target}/ok"}},
    "db": {
        "type": "db",
        "config": {"connection": "bench", "query": "select :n + 1 as v", "params": {"n": 1}},
    },
    "code": {"type": "code", "config": {"source": "def main(data):\n    return data['input']['n'] + 1\n"}},
}


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def measure(
    url: str, node_type: str, node: dict[str, Any], n: int, target: str
) -> tuple[list[float], list[float]]:
    workflow_id = f"bench-{node_type}-{uuid.uuid4().hex[:6]}"
    config = json.loads(json.dumps(node).replace("{target}", target))
    status, body = call("POST", f"{url}/api/workflows", {"id": workflow_id, "nodes": [{"id": "x", **config}]})
    if status != 201:
        raise SystemExit(f"{node_type}: could not register: {body}")
    totals, overheads = [], []
    for i in range(n + 5):
        t0 = time.perf_counter()
        status, done = call(
            "POST", f"{url}/api/executions?wait=30", {"workflow_id": workflow_id, "input_data": {"n": i}}
        )
        total = time.perf_counter() - t0
        if status != 200 or done["status"] != "success":
            raise SystemExit(f"{node_type}: run failed: {done}")
        node_state = done["nodes"]["x"]
        usage = node_state["usage"] or {}
        if "duration_us" in usage:  # a task: the executor timed the attempt itself
            own = usage["duration_us"] / 1_000_000
        else:  # inline (~0) or a timer (its wait)
            own = (ts(node_state["finished_at"]) - ts(node_state["started_at"])).total_seconds()
        if i >= 5:  # the first runs warm caches and pools
            totals.append(total)
            overheads.append(total - own)
    return totals, overheads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--types", default=",".join(NODES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        sqlite3.connect(db).close()
        server_iter = serve()
        target: TargetServer = next(server_iter)
        env = {"LINKFLOW_DATABASES": json.dumps({"bench": f"sqlite:///{db}"})}
        try:
            with own_engine(**env) as url:
                header = ("node type", "e2e p50", "e2e p99", "overhead p50", "overhead p99")
                print(f"{header[0]:<10} {header[1]:>9} {header[2]:>9} {header[3]:>13} {header[4]:>13}")
                for node_type in args.types.split(","):
                    totals, overheads = measure(url, node_type, NODES[node_type], args.n, target.url)
                    t50, t99 = (percentile(totals, q) * 1000 for q in (0.5, 0.99))
                    o50, o99 = (percentile(overheads, q) * 1000 for q in (0.5, 0.99))
                    print(f"{node_type:<10} {t50:8.1f}ms {t99:8.1f}ms {o50:12.1f}ms {o99:12.1f}ms")
        finally:
            server_iter.close()
    assert isinstance(target, ThreadingHTTPServer)


if __name__ == "__main__":
    main()
