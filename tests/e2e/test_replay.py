"""Event-replay tooling against a running engine: the rebuilt view equals the live one."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkflow_stream.dev.testing import ROOT, EngineProcess
from linkflow_stream.replay import rebuild
from projections.read_model import StoreUnavailable
from projections.store import Changes
from projections.store.sqlite import SqliteStore

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


COLUMNS = {
    "body": ("SELECT body FROM executions WHERE id = ?", "UPDATE executions SET body = ? WHERE id = ?"),
    "summary": (
        "SELECT summary FROM executions WHERE id = ?",
        "UPDATE executions SET summary = ? WHERE id = ?",
    ),
}


@contextlib.contextmanager
def tampered(store: Path, column: str, execution_id: str) -> Iterator[None]:
    """The run's stored ``column`` saying "failed" where it says "success", until the block ends."""
    select, update = COLUMNS[column]
    with sqlite3.connect(store) as db:
        (text,) = db.execute(select, (execution_id,)).fetchone()
        assert '"success"' in text
        db.execute(update, (text.replace('"success"', '"failed"'), execution_id))
    try:
        yield
    finally:
        with sqlite3.connect(store) as db:
            db.execute(update, (text, execution_id))


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

    # A stored body that went wrong (here: changed by hand) is a difference, though its state
    # holds; so is a summary (what `GET /api/executions?view=summary` lists).
    for column, run in (("body", ids[0]), ("summary", ids[1])):
        with tampered(live, column, run):
            changed = linkflow(engine, "replay", "status")
        assert changed.returncode != 0 and "3 equal, 1 different" in changed.stdout, (column, changed.stdout)
        assert f"mismatch: {run}" in changed.stdout
    assert "4 equal, 0 different" in linkflow(engine, "replay", "status").stdout

    one = linkflow(engine, "replay", "execution", ids[-1])
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert lines[0].split()[:3][0] == "1" and "execution_created" in lines[0]
    assert "execution_succeeded" in lines[-1]
    assert sum("node_succeeded" in line for line in lines) == 3

    missing = linkflow(engine, "replay", "execution", "exec_nope")
    assert missing.returncode != 0 and "no events for exec_nope" in missing.stderr


class FullDisk(SqliteStore):
    """A store that opens, then refuses every write (a disk that filled up)."""

    async def write(self, changes: Changes) -> None:
        raise OSError(28, "No space left on device")


async def test_a_rebuild_whose_store_refuses_its_writes_fails_with_why(
    engine: EngineProcess, tmp_path: Path
) -> None:
    """It tried again for ever before: ``linkflow replay status`` hung with a retry line every few
    seconds. (Its last write, the live runs' rows, is ``ReadModel.write_all``, which raises: the
    unit test in test_rows_behind.py.)"""
    wf_id = f"replay-full-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "t", "type": "transform", "config": {"expression": "1"}}]})
    status, _ = engine.start_execution(wf_id, wait=10)
    assert status == 200
    with pytest.raises(StoreUnavailable, match=r"refused 5 writes in a row.*No space left on device"):
        await asyncio.wait_for(rebuild(engine.settings(), FullDisk(tmp_path / "full.sqlite3")), 60)
