"""An engine started by the test harness ends when the process that started it is killed.

Session 15 found eight engines of killed benchmark runs still running in the background, loading
the machine under every figure measured after them. ``EngineProcess.start`` ties its child with
``dies_with_parent``; this drives that function with a stand-in child (``sleep``), so it needs
no broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from linkflow_stream.dev.testing import ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="prctl(PR_SET_PDEATHSIG) is Linux's")

PARENT = """
import os, subprocess, sys
from linkflow_stream.dev.testing import dies_with_parent
parent = os.getpid()
tied = sys.argv[1] == "tied"
child = subprocess.Popen(["sleep", "60"], preexec_fn=(lambda: dies_with_parent(parent)) if tied else None)
print(child.pid, flush=True)
sys.stdin.read()  # until killed
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (init reaps the orphan at once)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_after_parent_killed(how: str, within: float) -> tuple[int, bool]:
    """Start a parent holding a ``sleep`` child, SIGKILL the parent; the child's pid and whether it
    still runs ``within`` seconds later (or once it has ended)."""
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child), "the child runs while its parent does"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + within
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, alive(child)


def test_a_tied_child_ends_when_its_parent_is_killed() -> None:
    _child, running = child_after_parent_killed("tied", within=5)
    assert not running


def test_an_untied_child_outlives_its_killed_parent() -> None:
    """The control: without the tie the child is orphaned and runs on (what benchmarks left)."""
    child, running = child_after_parent_killed("untied", within=1)
    try:
        assert running
    finally:
        os.kill(child, signal.SIGKILL)
