"""kill -9 of the engine mid-run: after a restart every execution completes, exactly once: its
committed log has each (execution, seq) once and one terminal event."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from linkflow_stream.core.state import ExecutionStatus
from linkflow_stream.dev.testing import EngineProcess, TargetServer
from tests.e2e.exactly_once import assert_exactly_once

pytestmark = pytest.mark.e2e

RUNS = 30


def test_kill_9_mid_run_loses_and_duplicates_nothing(
    engine_factory: Callable[..., EngineProcess], target: TargetServer
) -> None:
    engine = engine_factory()
    wf_id = f"crash-{uuid.uuid4().hex[:8]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "a", "type": "transform", "config": {"expression": "{'i': input.i}"}},
                {"id": "w", "type": "wait", "depends_on": ["a"], "config": {"seconds": 1.0}},
                {
                    "id": "h",
                    "type": "http",
                    "depends_on": ["w"],
                    "timeout_seconds": 3,
                    "config": {"method": "POST", "url": f"{target.url}/crash/{wf_id}", "json": {"i": 1}},
                },
                {"id": "side", "type": "wait", "depends_on": ["a"], "config": {"seconds": 5.0}},
                {
                    "id": "t",
                    "type": "transform",
                    "depends_on": ["h", "side"],
                    "config": {"expression": "nodes.a.i"},
                },
            ],
        }
    )
    ids = []
    for i in range(RUNS):
        status, body = engine.start_execution(wf_id, {"i": i})
        assert status == 202, body
        ids.append(body["id"])
        time.sleep(0.03)
    time.sleep(0.4)  # mid-run: some executions wait, some call HTTP, none has finished
    killed_at = datetime.now(UTC)
    engine.kill()

    engine.start()
    finished = {i: engine.wait_status(i, timeout=90) for i in ids}
    assert {b["status"] for b in finished.values()} == {"success"}, {
        i: b["status"] for i, b in finished.items()
    }
    for number, execution_id in enumerate(ids):
        assert finished[execution_id]["nodes"]["t"]["output"] == number
    finished_after_kill = [
        i
        for i, b in finished.items()
        if datetime.fromisoformat(b["finished_at"].replace("Z", "+00:00")) > killed_at
    ]
    assert len(finished_after_kill) >= RUNS // 2, (
        f"only {len(finished_after_kill)} of {RUNS} executions were still running at the kill"
    )

    states = assert_exactly_once(engine, ids)
    assert {s.status for s in states.values()} == {ExecutionStatus.SUCCESS}
    # HTTP side effects are at-least-once: every execution called the server, with its idempotency key.
    keys = {r["headers"]["Idempotency-Key"].split("/")[0] for r in target.hits(f"/crash/{wf_id}")}
    assert keys == set(ids)
