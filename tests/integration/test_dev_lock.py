"""One `linkflow dev` per data dir: a second one, while the first runs, is refused before it
starts anything (it used to reuse the first's broker, fail on the API port, and stop that broker
on its way out, taking the first engine's broker with it). No broker is needed: the refusal comes
first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from linkflow_stream.cli import _one_dev_per_data_dir

pytestmark = pytest.mark.integration

LINKFLOW = Path(sys.executable).with_name("linkflow")


def test_a_second_dev_on_the_same_data_dir_is_refused_before_it_starts_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    held = _one_dev_per_data_dir(data_dir)
    try:
        started = time.monotonic()
        second = subprocess.run(
            [str(LINKFLOW), "dev", "--data-dir", str(data_dir), "--kafka-port", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"another `linkflow dev` (pid {os.getpid()}) is running" in second.stderr, second.stderr
        assert "Kafka" not in second.stdout, "it started nothing, so it stops nothing"
        assert time.monotonic() - started < 30
        with pytest.raises(click.ClickException, match="is running with the data dir"):
            _one_dev_per_data_dir(data_dir)  # in this process too: the lock is per open file
    finally:
        held.close()
    _one_dev_per_data_dir(data_dir).close()  # free once its holder lets go


def test_the_lock_of_a_dev_killed_with_sigkill_is_free_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from linkflow_stream.cli import _one_dev_per_data_dir\n"
        "lock = _one_dev_per_data_dir(Path(sys.argv[1]))\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(click.ClickException, match=f"pid {holder.pid}"):
            _one_dev_per_data_dir(data_dir)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        _one_dev_per_data_dir(data_dir).close()
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
