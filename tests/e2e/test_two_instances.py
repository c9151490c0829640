"""Two engine processes in one consumer group: reads work on either, and one takes over the other's work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from linkflow_stream.dev.testing import EngineProcess, call

pytestmark = pytest.mark.e2e


def test_reads_from_any_instance_and_failover(engine_factory: Callable[..., EngineProcess]) -> None:
    a = engine_factory(LINKFLOW_LOG_LEVEL="debug")
    b = a.sibling()
    b.start()
    try:
        wf = {
            "id": f"pair-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "first", "type": "transform", "config": {"expression": "input.i"}},
                {"id": "w", "type": "wait", "depends_on": ["first"], "config": {"seconds": 2}},
                {
                    "id": "last",
                    "type": "transform",
                    "depends_on": ["w"],
                    "config": {"expression": "nodes.first * 10"},
                },
            ],
        }
        a.register(wf)
        # Workflow registrations reach the other instance through the log.
        deadline = time.monotonic() + 10
        while call("GET", f"{b.url}/api/workflows/{wf['id']}")[0] != 200:
            assert time.monotonic() < deadline, "instance b never saw the workflow"
            time.sleep(0.1)
        ids = []
        for i in range(12):
            accepting, other = (a, b) if i % 2 else (b, a)
            status, body = accepting.start_execution(wf["id"], {"i": i})
            assert status == 202
            ids.append(body["id"])
            # At once, the other instance knows it too: a read syncs its views before any 404.
            status, seen = call("GET", f"{other.url}/api/executions/{body['id']}")
            assert status == 200, (other.url, seen)
        a.kill()  # a owned some partitions: b must take them over and finish their waits
        for i, execution_id in enumerate(ids):
            done = b.wait_status(execution_id, timeout=60)
            assert done["status"] == "success", done
            assert done["nodes"]["last"]["output"] == i * 10
    finally:
        b.stop()
