"""The UI's WebSocket follower (``api.js`` ``follow``) under node with a fake WebSocket, fetch and
timers: it must not reconnect forever to a run that is gone, must ask for a key when refused one,
must back off while the engine is down, and must stop when the server closed on purpose."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.http.ui import assets_dir

HARNESS = Path(__file__).parent / "js" / "follow_harness.mjs"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def follow(scenario: str) -> dict[str, Any]:
    folder = Path(str(assets_dir())).as_uri()
    done = subprocess.run(
        ["node", str(HARNESS), folder, scenario], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_a_run_that_is_gone_ends_the_follow() -> None:
    seen = follow("gone")
    assert len(seen["sockets"]) == 1, "no reconnect to a 404"
    assert seen["fetches"] == [{"path": "/api/executions/r1/watch", "auth": None}]
    assert seen["states"][-1] == "ended"


def test_a_refused_key_is_asked_for_and_the_new_one_offered() -> None:
    seen = follow("refused_then_key")
    assert seen["dialogs"] == 1
    assert len(seen["sockets"]) >= 2
    assert "bearer.lfk_0123456789ab_new" in seen["sockets"][1]["protocols"]
    assert seen["fetches"][-1]["auth"] == "Bearer lfk_0123456789ab_new"


def test_an_engine_that_is_down_is_retried_with_a_growing_delay() -> None:
    seen = follow("down")
    # 100, doubled up to the 400 cap; a socket that opened resets it to 100
    assert seen["delays"][:5] == [100, 200, 400, 400, 100], seen["delays"]
    assert "ended" not in seen["states"]


def test_a_normal_close_is_final() -> None:
    seen = follow("normal_close")
    assert len(seen["sockets"]) == 1 and seen["fetches"] == []
    assert seen["states"] == ["live", "ended"]
