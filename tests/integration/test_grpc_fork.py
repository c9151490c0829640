"""A process with gRPC in use starts subprocesses safely (ADR 0068): importing ``linkflow_stream``
turns gRPC's fork support off, whose poller thread, restarted in each forked child, aborted some
children before their ``exec`` (grpcio 1.80 to 1.85; CI lost a test engine to it).

Each case runs a fresh interpreter, since gRPC reads the setting once, when it is imported. The
interpreter serves the test collector over gRPC and exports spans to it through the engine's own
OTLP gRPC exporter in a second thread, while its main thread starts ``/bin/true`` with a
``preexec_fn`` (a real fork, as ``EngineProcess`` does) again and again. The control case is the
state before the default: the variable unset and ``grpc`` imported before ``linkflow_stream``. It
must see a child die (or stick between fork and exec: killed after 10 s, it counts as died),
which shows the traffic and the forks overlap enough to catch the fault the default prevents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FORKS = 600
CONTROL_FORKS = 3000
"""At most; it stops at the first death (about one fork in sixty measured here)."""

SCRIPT = """
import json, os, signal, subprocess, sys, threading, time
setting = os.environ.get("GRPC_ENABLE_FORK_SUPPORT")  # what grpc reads if imported first
if sys.argv[3] == "grpc-first":
    import grpc
from linkflow_stream.dev.trace_collector import collect
from linkflow_stream.tracing.provider import exporters
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

forks, until_first = int(sys.argv[1]), sys.argv[2] == "until-first"
collector_context = collect()
collector = next(collector_context)
environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.grpc_url
provider = TracerProvider()
for exporter in exporters(environ):
    provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("fork-check")
stop = threading.Event()

def export():
    while not stop.is_set():
        with tracer.start_as_current_span("tick"):
            pass

if sys.argv[3] != "grpc-first":
    setting = os.environ.get("GRPC_ENABLE_FORK_SUPPORT")  # set by importing linkflow_stream

def watchdog():
    # A child stuck between fork and exec (gRPC's fork handlers can deadlock too) would block
    # Popen for ever: one that lives past STUCK seconds is killed, and so counts as died.
    seen = {}
    while not stop.is_set():
        children = set()
        for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == os.getpid():
                children.add(pid)
        seen = {pid: seen.get(pid, time.monotonic()) for pid in children}  # a reused pid starts anew
        for pid, first in seen.items():
            if time.monotonic() - first > 10:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)

threads = [threading.Thread(target=f, daemon=True) for f in (export, watchdog)]
for thread in threads:
    thread.start()
collector.wait_for(lambda spans: len(spans) > 0, timeout=30)
before = len(collector.snapshot())
died, started = [], 0
while started < forks and not (until_first and died):
    started += 1
    child = subprocess.Popen(["/bin/true"], preexec_fn=lambda: None,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if child.wait() != 0:
        died.append(child.returncode)
during = len(collector.snapshot()) - before
stop.set()
for thread in threads:
    thread.join()
provider.shutdown()
collector_context.close()
print(json.dumps({"died": died, "started": started, "spans_during_forks": during,
                  "setting": setting, "grpc_first": sys.argv[3] == "grpc-first"}))
"""


def forks(count: int, *, control: bool = False) -> dict[str, Any]:
    """Fork ``count`` times in a fresh interpreter without ``GRPC_ENABLE_FORK_SUPPORT`` in its
    environment; the control imports ``grpc`` first and stops at the first child that dies."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    mode, order = ("until-first", "grpc-first") if control else ("all", "ours-first")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(count), mode, order],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,  # under pytest's 180 s, so the interpreter is not left behind
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_children_of_a_process_using_grpc_reach_their_exec() -> None:
    result = forks(FORKS)
    assert result["died"] == [], result
    assert result["started"] == FORKS and result["spans_during_forks"] > FORKS // 10, result
    assert result["setting"] == "false"


def test_before_the_default_children_died_which_is_what_it_prevents() -> None:
    result = forks(CONTROL_FORKS, control=True)
    assert result["setting"] is None and result["grpc_first"], result
    assert result["spans_during_forks"] > 0, result
    if not result["died"]:
        # The race is a matter of timing: a CI run of session 20 saw no death in 3,000 forks, where
        # session 19 saw the first at fork 54. An unseen race proves nothing either way, so the
        # control is inconclusive, not failed; the test above is the guard.
        pytest.skip(
            f"no child died in {CONTROL_FORKS} forks with gRPC imported before the default (a race "
            f"of timing; if it never shows again, grpcio may have fixed grpc/grpc#43055 and the "
            f"default in linkflow_stream/__init__.py, ADR 0068, can go): {result}"
        )
