"""Code nodes in the engine as a process (ADR 0020): user code cannot read the engine's
environment, secrets or files, nor open a socket to its API, its broker or anywhere else; and
where bubblewrap does not work, the engine says how to fix it once at start and every code node
fails with ``code_error`` in the same words.

The sandbox itself, attempt by attempt, is tried in ``tests/integration/test_code_sandbox.py``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.dev.testing import ROOT, EngineProcess
from linkflow_stream.nodes.sandbox import UNAVAILABLE, probe

pytestmark = pytest.mark.e2e

ESCAPE = """
import os, socket

def main(data):
    found = {}
    for path in data['input']['paths']:
        try:
            with open(path, 'rb') as f:
                found[path] = f.read().decode(errors='replace')
        except OSError as exc:
            found[path] = type(exc).__name__
    for host, port in data['input']['addresses']:
        try:
            socket.create_connection((host, port), timeout=2).close()
            found[f'{host}:{port}'] = 'connected'
        except OSError as exc:
            found[f'{host}:{port}'] = type(exc).__name__
    found['environ'] = dict(os.environ)
    return found
"""


def code_workflow(source: str, **node: Any) -> dict[str, Any]:
    return {
        "id": f"code-{uuid.uuid4().hex[:6]}",
        "nodes": [{"id": "c", "type": "code", "config": {"source": source}, **node}],
    }


def host_address() -> str:
    """This machine's outgoing address (no packet is sent), else a public one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return str(s.getsockname()[0])
    return "1.1.1.1"


def test_code_cannot_reach_the_engines_secrets_files_or_network(
    engine_factory: Callable[..., EngineProcess], kafka: str
) -> None:
    checked = probe()
    if not checked.works:
        pytest.skip(f"bubblewrap does not work here: {checked.problem}")
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    engine = engine_factory(
        LINKFLOW_SECRETS=json.dumps({"api": secret}),
        LINKFLOW_DATABASES=json.dumps({"main": f"postgresql://app:{secret}@127.0.0.1:1/app"}),
    )
    assert engine.proc is not None
    pid = engine.proc.pid
    assert secret in Path(f"/proc/{pid}/environ").read_text(errors="replace")  # there to be found
    in_data_dir = engine.data_dir / f"escape-{uuid.uuid4().hex}"
    in_cwd = ROOT / f"escape-{uuid.uuid4().hex}"  # the engine's working directory
    broker_host, broker_port = kafka.split(",")[0].rsplit(":", 1)
    paths = [
        f"/proc/{pid}/environ",
        "/proc/1/environ",
        "/proc/self/environ",
        str(in_data_dir),
        str(in_cwd),
        str(engine.data_dir / "views.sqlite3"),
        f"/proc/{pid}/root{in_data_dir}",
        f"/proc/{pid}/cwd/{in_cwd.name}",
    ]
    addresses = [
        ("127.0.0.1", engine.port),  # the engine's own API, listening
        (broker_host, int(broker_port)),  # the broker, listening
        (host_address(), int(broker_port)),
        ("1.1.1.1", 443),
    ]
    try:
        for planted in (in_data_dir, in_cwd):
            planted.write_text(secret)
            planted.chmod(0o644)
        wf = code_workflow(ESCAPE)
        engine.register(wf)
        status, done = engine.start_execution(wf["id"], {"paths": paths, "addresses": addresses}, wait=30)
    finally:
        for planted in (in_data_dir, in_cwd):
            planted.unlink(missing_ok=True)
    assert status == 200 and done["status"] == "success", done
    found = done["nodes"]["c"]["output"]
    assert secret not in json.dumps(done)
    assert not [k for k in found["environ"] if k.startswith("LINKFLOW_")], found["environ"]
    # The engine's environ and files are not there to read; the sandbox's own /proc/1 and
    # /proc/self show the sandbox's environment, which has nothing of the engine's.
    for path in [paths[0], *paths[3:]]:
        assert found[path] in ("FileNotFoundError", "PermissionError"), (path, found[path])
    for path in paths[1:3]:
        assert "LINKFLOW_" not in found[path], (path, found[path])
    for host, port in addresses:
        assert found[f"{host}:{port}"] != "connected", (host, port)
    # Bubblewrap works here: the engine says nothing about the sandbox.
    assert "bubblewrap" not in engine.log_path.read_text(errors="replace")


def test_without_bwrap_the_engine_warns_once_and_code_nodes_fail_naming_the_fix(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory(LINKFLOW_CODE_BWRAP="/nonexistent/bwrap")  # ready: the probe did not hold it

    def warnings() -> list[str]:
        return [
            line for line in engine.log_path.read_text(errors="replace").splitlines() if UNAVAILABLE in line
        ]

    deadline = time.monotonic() + 30
    while not warnings() and time.monotonic() < deadline:
        time.sleep(0.1)  # the probe runs in the background after start
    assert len(warnings()) == 1, engine.log_tail()
    assert "[WARNING]" in warnings()[0]
    assert "'/nonexistent/bwrap' is not an executable file" in warnings()[0]  # the probe's diagnostic

    wf = code_workflow(
        "def main(data):\n    return 1\n", retry={"max_attempts": 3, "initial_delay_seconds": 0}
    )
    engine.register(wf)
    for _ in range(2):
        status, done = engine.start_execution(wf["id"], wait=30)
        assert status == 200 and done["status"] == "failed", done
        node = done["nodes"]["c"]
        assert node["error"] == {"error_class": "code_error", "message": UNAVAILABLE, "retryable": False}
        assert node["attempts"] == 1  # not retried: the same worker cannot do better
    assert len(warnings()) == 1  # once, at start; not once a run
