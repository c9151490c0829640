"""The CLI's commands that talk to Kafka themselves, with no broker to answer: one line saying
so and exit code 4 (as the HTTP commands give for an engine that does not answer), not a
traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from linkflow_stream.dev.broker import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", [["events", "tail"], ["keys", "list"], ["replay", "execution", "x"]])
def test_a_command_that_finds_no_broker_says_so_in_one_line(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKFLOW_")}
    env["LINKFLOW_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "linkflow_stream.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 4, done.stderr
    assert "error: Kafka did not answer" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
