"""Event-replay tooling against a running engine: the rebuilt view equals the live one."""

from __future__ import annotations

import sqlite3
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

    # --into a store that exists (the live one, here) is refused: the rebuild empties its store
    (live,) = engine.data_dir.glob("*views.sqlite3")
    assert live.is_file()
    before = live.stat().st_mtime_ns, live.stat().st_size
    refused = linkflow(engine, "replay", "status", "--into", str(live))
    assert refused.returncode == 2 and "exists; the replay empties" in refused.stderr, refused.stderr
    assert (live.stat().st_mtime_ns, live.stat().st_size) == before, "the live read model is untouched"

    # a stored body that went wrong (here: changed by hand) is a difference, though its state holds
    with sqlite3.connect(live) as db:
        (body,) = db.execute("SELECT body FROM executions WHERE id = ?", (ids[0],)).fetchone()
        db.execute(
            "UPDATE executions SET body = ? WHERE id = ?", (body.replace('"success"', '"failed"'), ids[0])
        )
    try:
        changed = linkflow(engine, "replay", "status")
        assert changed.returncode != 0 and "3 equal, 1 different" in changed.stdout, changed.stdout
        assert f"mismatch: {ids[0]}" in changed.stdout
    finally:
        with sqlite3.connect(live) as db:
            db.execute("UPDATE executions SET body = ? WHERE id = ?", (body, ids[0]))

    # and so is a summary (what `GET /api/executions?view=summary` lists) that went wrong
    with sqlite3.connect(live) as db:
        (summary,) = db.execute("SELECT summary FROM executions WHERE id = ?", (ids[1],)).fetchone()
        assert '"success"' in summary
        db.execute(
            "UPDATE executions SET summary = ? WHERE id = ?",
            (summary.replace('"success"', '"failed"'), ids[1]),
        )
    try:
        changed = linkflow(engine, "replay", "status")
        assert changed.returncode != 0 and "3 equal, 1 different" in changed.stdout, changed.stdout
        assert f"mismatch: {ids[1]}" in changed.stdout
    finally:
        with sqlite3.connect(live) as db:
            db.execute("UPDATE executions SET summary = ? WHERE id = ?", (summary, ids[1]))
    assert "4 equal, 0 different" in linkflow(engine, "replay", "status").stdout

    one = linkflow(engine, "replay", "execution", ids[-1])
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].split()[:3][0] == "1" and "execution_created" in lines[0]
    assert "execution_succeeded" in lines[-1]
    assert sum("node_succeeded" in line for line in lines) == 3

    missing = linkflow(engine, "replay", "execution", "exec_nope")
    assert missing.returncode != 0 and "no events for exec_nope" in missing.stderr
