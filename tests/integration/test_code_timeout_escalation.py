"""A code node that runs out of time is stopped in two steps (issue 11, item 7): SIGTERM to the
code's processes ``kill_grace_seconds`` before its time is up, so ``main`` may clean up, then
SIGKILL of the whole sandbox at the end. The ``timeout`` failure says which one ended the run.
Real bubblewrap sandboxes; skipped, with the probe's reason, where bwrap does not work.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from linkflow_stream.core.node_contract import NodeContext
from linkflow_stream.nodes.code import CodeNode
from linkflow_stream.nodes.sandbox import CodeFailure, Limits

from .test_code_sandbox import DATA, Setup, require_bwrap, sandbox_processes, wait_no_sandbox_processes

IGNORES_SIGTERM = (
    "import signal, subprocess, sys, time\n"
    "def main(data):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    print('ignoring SIGTERM', flush=True)\n"
    "    while True:\n"
    "        time.sleep(0.05)\n"
)
CLEANS_UP = (
    "import signal, sys, time\n"
    "def on_term(signum, frame):\n"
    "    print('cleaning up', flush=True)\n"
    "    sys.exit(0)\n"
    "def main(data):\n"
    "    signal.signal(signal.SIGTERM, on_term)\n"
    "    print('working', flush=True)\n"
    "    time.sleep(60)\n"
)
DEFAULT_ACTION = "import time\ndef main(data):\n    print('sleeping', flush=True)\n    time.sleep(60)\n"


@pytest.fixture
def setup() -> Iterator[Setup]:
    found = require_bwrap()
    yield found
    wait_no_sandbox_processes()


def ctx(timeout: float) -> NodeContext:
    return NodeContext(f"e-{uuid.uuid4().hex[:8]}", "wf", "code1", 1, timeout)


async def test_code_that_ignores_sigterm_is_killed_after_the_grace(setup: Setup) -> None:
    failure = await setup.fail(IGNORES_SIGTERM, wall_seconds=3, kill_grace_seconds=1)
    assert (failure.error_type, failure.retryable) == ("timeout", True)
    assert failure.stopped == "killed (SIGKILL): it was still running 1s after SIGTERM"
    assert failure.message.endswith("; killed (SIGKILL): it was still running 1s after SIGTERM")
    assert failure.run.stdout == "ignoring SIGTERM\n"
    assert not sandbox_processes()


async def test_code_that_handles_sigterm_cleans_up_and_is_terminated(setup: Setup) -> None:
    failure = await setup.fail(CLEANS_UP, wall_seconds=3, kill_grace_seconds=1)
    assert failure.stopped == "terminated (SIGTERM)"
    assert failure.run.stdout == "working\ncleaning up\n", "the handler ran before the end"


async def test_sigterm_stops_code_without_a_handler(setup: Setup) -> None:
    failure = await setup.fail(DEFAULT_ACTION, wall_seconds=3, kill_grace_seconds=1)
    assert failure.stopped == "terminated (SIGTERM)"


async def test_no_grace_kills_at_once_and_the_handler_never_runs(setup: Setup) -> None:
    failure = await setup.fail(CLEANS_UP, wall_seconds=2, kill_grace_seconds=0)
    assert failure.stopped == "killed (SIGKILL)"
    assert failure.run.stdout == "working\n"


def test_the_grace_is_at_most_half_the_wall_clock() -> None:
    assert Limits(wall_seconds=10, kill_grace_seconds=2).term_seconds == 8
    assert Limits(wall_seconds=3, kill_grace_seconds=5).term_seconds == 1.5
    assert Limits(wall_seconds=3).term_seconds == 3


async def test_the_node_config_and_the_setting_choose_the_grace(setup: Setup) -> None:
    node = CodeNode(warm_sandboxes=0, kill_grace_seconds=0)
    try:
        with pytest.raises(CodeFailure) as info:
            await node.execute(ctx(3.0), {"source": IGNORES_SIGTERM}, DATA)
        assert (
            info.value.message == "the code did not finish within the node's timeout of 3s; killed (SIGKILL)"
        )
        with pytest.raises(CodeFailure) as info:
            await node.execute(ctx(3.0), {"source": CLEANS_UP, "kill_grace_seconds": 1}, DATA)
        assert info.value.message == (
            "the code did not finish within the node's timeout of 3s; terminated (SIGTERM)"
        )
        assert info.value.run.stdout == "working\ncleaning up\n"
    finally:
        await node.close()
