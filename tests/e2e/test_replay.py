"""Event-replay tooling against a running engine: the rebuilt view equals the live one."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from linkflow_stream.dev.testing import ROOT, EngineProcess

pytestmark = pytest.mark.e2e


def linkflow(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkflow_stream.cli", *args],
        cwd=ROOT,
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_replay_rebuilds_the_status_view_and_it_equals_the_live_one(engine: EngineProcess) -> None:
    wf = {
        "id": f"replay-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "input.n + 1"}},
            {"id": "c", "type": "condition", "depends_on": ["a"], "config": {"expression": "nodes.a > 2"}},
            {"id": "b", "type": "transform", "depends_on": ["c:true"], "config": {"expression": "'big'"}},
        ],
    }
    engine.register(wf)
    ids = []
    for n in range(4):
        status, body = engine.start_execution(wf["id"], {"n": n}, wait=10)
        assert status == 200
        ids.append(body["id"])
    result = linkflow(engine, "replay", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 equal, 0 different, 0 with different log lines, 0 missing" in result.stdout

    one = linkflow(engine, "replay", "execution", ids[-1])
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].split()[:3][0] == "1" and "execution_created" in lines[0]
    assert "execution_succeeded" in lines[-1]
    assert sum("node_succeeded" in line for line in lines) == 3

    missing = linkflow(engine, "replay", "execution", "exec_nope")
    assert missing.returncode != 0 and "no events for exec_nope" in missing.stderr
