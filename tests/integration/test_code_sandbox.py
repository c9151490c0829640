"""The ``code`` node's sandbox with real processes: happy paths, escapes that must be stopped,
and what happens where bubblewrap does not work.

Code runs only in bubblewrap (ADR 0020): the tests that run code need a working ``bwrap`` and are
skipped, with the probe's reason, where there is none. After each escape attempt the test
process must still be healthy: it can still run code, open sockets and files, its own rlimits
are untouched, and no sandbox process is left. The engine as a whole process (its real
environment, data dir and ports) is tried in ``tests/e2e/test_code_isolation.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.core.node_contract import NodeContext, NodeFailure
from linkflow_stream.nodes.code import CodeNode
from linkflow_stream.nodes.registry import build_registry
from linkflow_stream.nodes.sandbox import (
    UNAVAILABLE,
    CodeFailure,
    CodeRun,
    Limits,
    SandboxPool,
    SandboxUnavailableError,
    probe,
    run_code,
)
from linkflow_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
DATA = {"input": {"a": 2}, "nodes": {"x": {"b": 3}}}


@dataclass(frozen=True)
class Setup:
    """Runs code as the code node does: the engine's Python, in bwrap."""

    async def run(self, source: str, data: Any = None, **limits: Any) -> CodeRun:
        return await run_code(source, DATA if data is None else data, Limits(**limits))

    async def fail(self, source: str, data: Any = None, **limits: Any) -> CodeFailure:
        with pytest.raises(CodeFailure) as info:
            await self.run(source, data, **limits)
        return info.value


def require_bwrap() -> Setup:
    """Skip, saying why, where bwrap does not work (code runs nowhere else)."""
    checked = probe()
    if not checked.works:
        pytest.skip(f"bubblewrap does not work here: {checked.problem}")
    return Setup()


def sandbox_processes() -> list[str]:
    """Live processes of any sandbox (bwrap's and the runner's command lines name the runner)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"sandbox_runner" in cmdline:
            found.append(pid + ": " + cmdline.replace(b"\0", b" ")[:120].decode(errors="replace"))
    return found


def wait_no_sandbox_processes(seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while (left := sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"sandbox processes left behind: {left}"


LIMITS_TO_KEEP = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC, resource.RLIMIT_NOFILE)


@pytest.fixture
def setup() -> Iterator[Setup]:
    """A working sandbox; afterwards, the test process must be healthy."""
    before = {which: resource.getrlimit(which) for which in LIMITS_TO_KEEP}
    yield require_bwrap()
    wait_no_sandbox_processes()
    assert {which: resource.getrlimit(which) for which in LIMITS_TO_KEEP} == before
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


def on_host(path: str | Path) -> bool:
    return Path(path).exists()


def remove(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


async def until(predicate: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)


async def assert_healthy(setup: Setup) -> None:
    run = await setup.run("def main(data):\n    return data\n", {"still": "working"})
    assert run.result == {"still": "working"}


@pytest.fixture
async def node() -> AsyncIterator[CodeNode]:
    require_bwrap()
    n = CodeNode(warm_sandboxes=2)
    yield n
    await n.close()
    wait_no_sandbox_processes()


def ctx(timeout: float = 10.0) -> NodeContext:
    return NodeContext(f"e-{uuid.uuid4().hex[:8]}", "wf", "code1", 1, timeout)


# --- happy paths ---------------------------------------------------------------------------


async def test_this_machine_runs_code_in_bwrap() -> None:
    checked = probe()
    assert checked == probe()  # probed once per process
    if not checked.works:
        pytest.skip(f"{UNAVAILABLE} ({checked.problem})")
    assert checked.problem == ""


async def test_the_engines_code_node_keeps_no_attempt_after_it_reported() -> None:
    """What an attempt printed goes into its result; the engine's node keeps nothing of it after
    (it kept the last 256 attempts, results of up to 8 MiB included, in every executor)."""
    require_bwrap()
    node = build_registry(Settings())["code"]
    assert isinstance(node, CodeNode)
    try:
        c = ctx()
        source = "def main(data):\n    print('hello')\n    return 'x' * 100_000\n"
        assert await node.execute(c, {"source": source}, DATA) == "x" * 100_000
        assert c.logs == {"stdout": "hello\n"}
        assert node.runs == {}
    finally:
        await node.close()


async def test_node_output_is_mains_return_value(node: CodeNode) -> None:
    source = (
        "def main(data):\n"
        "    return {'sum': data['input']['a'] + data['nodes']['x']['b'], 'list': (1, 'é', None, 2.5)}\n"
    )
    config = {"source": source}
    node.validate(config)
    c = ctx()
    assert await node.execute(c, config, DATA) == {"sum": 5, "list": [1, "é", None, 2.5]}
    run = node.runs[c.idempotency_key]
    assert run.duration > 0
    assert run.cpu_seconds is not None
    assert 0 < run.cpu_seconds < 5
    assert run.max_rss_kb is not None
    assert 1000 < run.max_rss_kb < 256 * 1024
    assert c.usage["cpu_us"] == round(run.cpu_seconds * 1_000_000)
    assert c.usage["max_rss_kb"] == run.max_rss_kb


async def test_prints_are_captured_as_logs_not_output(node: CodeNode) -> None:
    seen: list[tuple[str, CodeRun]] = []
    node.on_run = lambda c, run: seen.append((c.idempotency_key, run))
    source = (
        "import sys\n"
        "def main(data):\n"
        "    print('hello', data['input']['a'])\n"
        "    print('careful', file=sys.stderr)\n"
        "    return 'done'\n"
    )
    c = ctx()
    assert await node.execute(c, {"source": source}, DATA) == "done"
    run = node.runs[c.idempotency_key]
    assert (run.stdout, run.stderr, run.result) == ("hello 2\n", "careful\n", "done")
    assert seen == [(c.idempotency_key, run)]


async def test_output_is_capped_at_64_kib(node: CodeNode) -> None:
    c = ctx()
    source = "def main(data):\n    print('x' * 200_000)\n    return len('x' * 200_000)\n"
    assert await node.execute(c, {"source": source}, DATA) == 200_000
    stdout = node.runs[c.idempotency_key].stdout
    assert stdout.startswith("x" * 1000)
    assert stdout.endswith("[... output truncated]")
    assert len(stdout) < 64 * 1024 + 100


async def test_an_exception_is_a_code_error_with_lines_of_the_users_source(node: CodeNode) -> None:
    source = (
        "def helper(x):\n    return 10 / x\n\ndef main(data):\n    print('before')\n    return helper(0)\n"
    )
    c = ctx()
    with pytest.raises(CodeFailure) as info:
        await node.execute(c, {"source": source}, DATA)
    failure = info.value
    assert failure.error_type == "code_error"
    assert failure.retryable is False
    assert failure.message.startswith("ZeroDivisionError: division by zero")
    assert 'File "<code>", line 6, in main' in failure.message
    assert 'File "<code>", line 2, in helper' in failure.message
    assert "return 10 / x" in failure.message
    assert "sandbox_runner" not in failure.message  # the runner's own frames are cut off
    assert failure.run.stdout == "before\n"
    assert node.runs[c.idempotency_key] is failure.run


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("return {1, 2}", "not JSON: TypeError"),
        ("return float('nan')", "not JSON: ValueError"),
        ("return object()", "not JSON"),
        ("import sys\n    sys.exit(3)", "sys.exit(3)"),
        ("import os\n    os._exit(4)", "exit 4"),
    ],
)
async def test_results_that_are_not_json_and_early_exits_are_code_errors(body: str, words: str) -> None:
    failure = await require_bwrap().fail(f"def main(data):\n    {body}\n")
    assert failure.error_type == "code_error"
    assert words in failure.message


async def test_a_result_over_the_size_limit_is_a_resource_limit() -> None:
    setup = require_bwrap()
    failure = await setup.fail("def main(data):\n    return 'x' * 5000\n", result_bytes=1000)
    assert failure.error_type == "resource_limit"
    assert "1000 bytes" in failure.message


async def test_pool_gives_each_run_a_fresh_process(node: CodeNode) -> None:
    source = (
        "import os\n"
        "seen = []\n"
        "def main(data):\n"
        "    seen.append(1)\n"
        "    before = os.path.exists('mark')\n"
        "    open('mark', 'w').write('x')\n"
        "    return {'calls': len(seen), 'mark_before': before}\n"
    )
    results = [await node.execute(ctx(), {"source": source}, DATA) for _ in range(4)]
    assert results == [{"calls": 1, "mark_before": False}] * 4
    await until(lambda: len(node._pool._idle) == 2)  # the pool refills in the background
    assert len(node._pool._idle) == 2


async def test_concurrent_runs_beyond_the_pool_start_their_own_sandboxes(node: CodeNode) -> None:
    source = "import time\ndef main(data):\n    time.sleep(0.2)\n    return data['input']\n"
    results = await asyncio.gather(*(node.execute(ctx(), {"source": source}, {"input": i}) for i in range(6)))
    assert results == list(range(6))


async def test_a_closed_pool_leaves_no_process() -> None:
    require_bwrap()
    pool = SandboxPool(3)
    await pool.warm()
    await until(lambda: len(pool._idle) == 3)
    assert len(pool._idle) == 3
    assert sandbox_processes()
    await pool.close()
    wait_no_sandbox_processes()


# --- escapes -------------------------------------------------------------------------------


async def test_network_is_unreachable_even_on_loopback(setup: Setup) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # noqa: S104 - the test listens everywhere so nothing is missed
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = (
            "import socket\n"
            "def main(data):\n"
            "    s = socket.create_connection(('127.0.0.1', data['port']), timeout=3)\n"
            "    s.sendall(b'escaped')\n"
            "    return 'connected'\n"
        )
        failure = await setup.fail(source, {"port": port})
        assert failure.error_type == "code_error"
        assert "ConnectionRefusedError" in failure.message or "Network is unreachable" in failure.message
        others = (
            "import socket\n"
            "def main(data):\n"
            "    outcomes = {}\n"
            "    for host in data['hosts']:\n"
            "        try:\n"
            "            socket.create_connection((host, data['port']), timeout=2).close()\n"
            "            outcomes[host] = 'connected'\n"
            "        except OSError as exc:\n"
            "            outcomes[host] = type(exc).__name__\n"
            "    return outcomes\n"
        )
        hosts = ["127.0.0.1", *_host_addresses(), "1.1.1.1"]
        run = await setup.run(others, {"port": port, "hosts": hosts})
        assert "connected" not in run.result.values(), run.result
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached the listener
    await assert_healthy(setup)


def _host_addresses() -> list[str]:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent; this picks the outgoing address
        return [s.getsockname()[0]]
    return []


async def test_abstract_unix_sockets_of_the_host_are_unreachable(setup: Setup) -> None:
    # Abstract Unix sockets have no file: they belong to the network namespace, so a service of
    # the host listening on one is only out of reach because the sandbox has a namespace of its own.
    name = f"\0linkflow-escape-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(8)
        listener.setblocking(False)
        source = (
            "import socket\n"
            "def main(data):\n"
            "    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:\n"
            "        s.connect(data['name'])\n"
            "    return 'connected'\n"
        )
        failure = await setup.fail(source, {"name": name})
        assert failure.error_type == "code_error"
        assert "ConnectionRefusedError" in failure.message, failure.message
        with pytest.raises(BlockingIOError):
            listener.accept()
    await assert_healthy(setup)


@pytest.mark.parametrize("where", ["project", "root", "usr", "etc", "engine_home"])
async def test_writing_outside_the_temp_dir_fails(setup: Setup, where: str) -> None:
    if where == "engine_home" and Path.home().is_relative_to(tempfile.gettempdir()):
        pytest.skip("the engine's home is under /tmp, which is private in the sandbox")
    name = f"escape-{uuid.uuid4().hex}"
    directory = {
        "project": str(ROOT),
        "root": "/",
        "usr": "/usr/lib",
        "etc": "/etc",
        "engine_home": str(Path.home()),
    }[where]
    target = Path(directory, name)
    source = "def main(data):\n    open(data['path'], 'w').write('escaped')\n    return 'written'\n"
    try:
        failure = await setup.fail(source, {"path": str(target)})
        assert failure.error_type == "code_error"
        assert any(e in failure.message for e in ("PermissionError", "Read-only", "FileNotFoundError")), (
            failure.message
        )
        assert not on_host(target)
    finally:
        remove(target)
    await assert_healthy(setup)


READ_EACH = (
    "def main(data):\n"
    "    outcomes = {}\n"
    "    for path in data['paths']:\n"
    "        try:\n"
    "            with open(path, 'rb') as f:\n"
    "                outcomes[path] = f.read().decode(errors='replace')\n"
    "        except OSError as exc:\n"
    "            outcomes[path] = type(exc).__name__\n"
    "    return outcomes\n"
)
"""Reads each of ``data['paths']``: its text, or the name of the error."""


@pytest.mark.parametrize("where", ["cwd", "project", "data_dir", "tmp", "engine_home"])
async def test_the_engines_files_are_not_there_to_read(setup: Setup, where: str) -> None:
    # Not a question of permissions (the file is 0644, and the run may have the engine's uid):
    # the sandbox's file system does not have it, neither directly nor through the engine's
    # /proc/<pid>/root, cwd and fd links.
    directory = {
        "cwd": Path.cwd(),
        "project": ROOT / "linkflow_stream",
        "data_dir": Settings().data_dir.resolve(),
        "tmp": Path(tempfile.gettempdir()),
        "engine_home": Path.home(),
    }[where]
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    target = directory / f"escape-{uuid.uuid4().hex}"
    target.write_text(secret)
    target.chmod(0o644)
    engine = os.getpid()
    with target.open() as held:  # an open fd of the engine's on the file, as in /proc/<pid>/fd
        paths = [
            str(target),
            f"/proc/{engine}/root{target}",
            f"/proc/{engine}/cwd/{target.name}",
            f"/proc/{engine}/fd/{held.fileno()}",
            f"/proc/1/root{target}",
            f"/proc/self/root{target}",
        ]
        try:
            run = await setup.run(READ_EACH, {"paths": paths})
        finally:
            target.unlink()
            if made:
                shutil.rmtree(directory, ignore_errors=True)
    assert secret not in repr(run.result)
    assert set(run.result.values()) <= {"FileNotFoundError", "PermissionError"}, run.result
    await assert_healthy(setup)


READ_OPEN_DESCRIPTORS = """
import os, stat
def main(data):
    found = {}
    for fd in range(3, 256):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                found[fd] = os.pread(fd, 200, 0).decode(errors="replace")
        except OSError:
            pass
    return found
"""
"""Reads what it can of every file open above stderr (a pipe or socket could block the read)."""


async def test_a_descriptor_the_engine_inherited_is_not_open_in_the_code(
    setup: Setup, tmp_path: Path
) -> None:
    """Python's spawn closes descriptors the engine did not pass; uvloop's (libuv) leaves every
    inheritable one open, and bwrap passes it on: the runner closes them before the code runs."""
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    target = tmp_path / "inherited"
    target.write_text(secret)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)  # as a shell's `exec 3<file` leaves it to the engine
        run = await setup.run(READ_OPEN_DESCRIPTORS)
    finally:
        os.close(fd)
    assert secret not in repr(run.result), run.result


async def test_the_temp_dir_is_private_and_removed(setup: Setup) -> None:
    name = f"/tmp/escape-{uuid.uuid4().hex}"  # noqa: S108 - the point is to try the host's /tmp
    source = (
        "import os, tempfile\n"
        "def main(data):\n"
        "    open(data['path'], 'w').write('escaped')\n"
        "    with open(os.path.join(tempfile.gettempdir(), 'scratch'), 'w') as f:\n"
        "        f.write('ok')\n"
        "    open('in-cwd', 'w').write('ok')\n"
        "    return {'cwd': os.getcwd(), 'home': os.environ['HOME'], 'tmp': os.environ['TMPDIR'],\n"
        "            'listing': sorted(os.listdir('/tmp'))}\n"
    )
    try:
        run = await setup.run(source, {"path": name})
        listing = sorted([Path(name).name, "in-cwd", "scratch"])
        assert run.result == {"cwd": "/tmp", "home": "/tmp", "tmp": "/tmp", "listing": listing}  # noqa: S108
        assert not on_host(name)  # it went to the sandbox's own /tmp, gone with it
    finally:
        remove(name)
    await assert_healthy(setup)


async def test_the_engines_environment_does_not_reach_the_code(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKFLOW_SECRET_TEST", "s3cr3t")
    monkeypatch.setenv("PYTHONSTARTUP", "/nonexistent")
    run = await setup.run("import os\ndef main(data):\n    return dict(os.environ)\n")
    assert "LINKFLOW_SECRET_TEST" not in run.result
    assert "s3cr3t" not in repr(run.result)
    assert not [k for k in run.result if k.startswith(("LINKFLOW_", "PYTHON"))]
    assert set(run.result) <= {"PATH", "LANG", "TMPDIR", "HOME", "PWD", "LC_CTYPE"}
    await assert_healthy(setup)


@pytest.fixture
def secret_holder() -> Iterator[tuple[int, str]]:
    """A process started with secrets in its environment, as the engine is: its pid and the secret.

    /proc/<pid>/environ shows the environment a process was started with (what ``putenv``
    adds later is not there), so the secret must be there from the start to be worth hiding.
    """
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LINKFLOW_SECRETS": f'{{"api": "{secret}"}}',
        "LINKFLOW_DATABASES": f'{{"main": "postgresql://app:{secret}@db/app"}}',
    }
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    try:
        environ = Path(f"/proc/{proc.pid}/environ")
        deadline = time.monotonic() + 10
        while secret.encode() not in environ.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the exec: the host can read the secret there
        assert secret.encode() in environ.read_bytes()
        yield proc.pid, secret
    finally:
        proc.kill()
        proc.wait()


async def test_no_process_environment_can_be_read_for_secrets(
    setup: Setup, secret_holder: tuple[int, str]
) -> None:
    holder, secret = secret_holder
    engine = os.getpid()
    source = (
        "import os\n"
        "def main(data):\n"
        "    pids = [*data['pids'], 1, 'self', *(p for p in os.listdir('/proc') if p.isdigit())]\n"
        "    seen = {}\n"
        "    for pid in pids:\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/environ', 'rb') as f:\n"
        "                seen[str(pid)] = f.read().decode(errors='replace')\n"
        "        except OSError as exc:\n"
        "            seen[str(pid)] = type(exc).__name__\n"
        "    return {'seen': seen, 'visible': [os.path.exists(f'/proc/{p}') for p in data['pids']]}\n"
    )
    run = await setup.run(source, {"pids": [engine, holder]})
    assert secret not in repr(run.result)
    assert "LINKFLOW_" not in repr(run.result), run.result["seen"]
    if min(engine, holder) > 100:
        # A PID namespace of its own: the engine and its neighbours are not even there.
        assert run.result["visible"] == [False, False]
        assert run.result["seen"][str(engine)] == run.result["seen"][str(holder)] == "FileNotFoundError"
    await assert_healthy(setup)


async def test_a_fork_bomb_ends_quickly_and_leaves_no_process(setup: Setup) -> None:
    source = "import os\ndef main(data):\n    while True:\n        os.fork()\n"
    started = time.monotonic()
    failure = await setup.fail(source, wall_seconds=20)
    assert time.monotonic() - started < 10
    assert failure.error_type in ("resource_limit", "code_error")
    assert "BlockingIOError" in failure.message or "resource" in failure.message.lower()
    wait_no_sandbox_processes()
    await assert_healthy(setup)


async def test_processes_that_leave_the_session_are_killed_too(setup: Setup) -> None:
    source = (
        "import os, time\n"
        "def main(data):\n"
        "    for _ in range(3):\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(600)\n"
        "            os._exit(0)\n"
        "    return 'detached'\n"
    )
    # Enough processes even when the count is the engine's user's (when the engine is not root).
    run = await setup.run(source, processes=100_000)
    assert run.result == "detached"
    wait_no_sandbox_processes()
    await assert_healthy(setup)


@pytest.mark.parametrize("how", ["at_once", "bit_by_bit"])
async def test_allocating_too_much_memory_is_a_resource_limit(setup: Setup, how: str) -> None:
    source = {
        "at_once": "def main(data):\n    return len(bytearray(4 * 1024**3))\n",
        "bit_by_bit": (
            "def main(data):\n    keep = []\n    while True:\n        keep.append(bytearray(2**20))\n"
        ),
    }[how]
    failure = await setup.fail(source, memory_mb=128)
    assert failure.error_type == "resource_limit"
    assert "memory" in failure.message
    await assert_healthy(setup)


async def test_an_infinite_loop_hits_the_cpu_limit(setup: Setup) -> None:
    started = time.monotonic()
    failure = await setup.fail(
        "def main(data):\n    while True:\n        pass\n", cpu_seconds=1, wall_seconds=20
    )
    assert failure.error_type == "resource_limit"
    assert "CPU" in failure.message
    assert time.monotonic() - started < 1 + 2
    await assert_healthy(setup)


async def test_a_loop_that_swallows_the_cpu_signal_is_killed(setup: Setup) -> None:
    source = (
        "def main(data):\n"
        "    while True:\n"
        "        try:\n"
        "            while True:\n"
        "                pass\n"
        "        except BaseException:\n"
        "            pass\n"
    )
    started = time.monotonic()
    failure = await setup.fail(source, cpu_seconds=1, wall_seconds=20)
    assert failure.error_type == "resource_limit"
    assert "SIGKILL" in failure.message
    assert time.monotonic() - started < 2 + 2
    await assert_healthy(setup)


async def test_an_idle_infinite_loop_hits_the_wall_clock(setup: Setup) -> None:
    started = time.monotonic()
    failure = await setup.fail(
        "import time\ndef main(data):\n    while True:\n        time.sleep(0.05)\n", wall_seconds=1
    )
    assert failure.error_type == "timeout"
    assert failure.retryable is True
    assert time.monotonic() - started < 1 + 1.5
    await assert_healthy(setup)


async def test_cancelling_a_run_kills_the_sandbox(setup: Setup) -> None:
    task = asyncio.create_task(setup.run("import time\ndef main(data):\n    time.sleep(60)\n"))
    await until(sandbox_processes)
    await asyncio.sleep(0.3)  # well into main
    assert sandbox_processes()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sandbox_processes()  # gone by the time CancelledError arrives
    await assert_healthy(setup)


@pytest.mark.parametrize("delay", [0, 0.001, 0.003, 0.006, 0.01, 0.02, 0.04])
async def test_cancelling_at_any_moment_of_start_up_leaves_no_process(setup: Setup, delay: float) -> None:
    for _ in range(3):
        task = asyncio.create_task(setup.run("import time\ndef main(data):\n    time.sleep(60)\n"))
        await asyncio.sleep(delay)
        task.cancel()
        async with asyncio.timeout(10):  # must not hang, whatever the moment
            with pytest.raises(asyncio.CancelledError):
                await task
        wait_no_sandbox_processes()


async def test_closing_a_pool_while_it_fills_leaves_no_process() -> None:
    require_bwrap()
    for delay in (0, 0.005, 0.02):
        pool = SandboxPool(3)
        await pool.warm()
        await asyncio.sleep(delay)
        async with asyncio.timeout(10):
            await pool.close()
        wait_no_sandbox_processes()


async def test_cancelling_execute_like_the_executor_leaves_no_process() -> None:
    require_bwrap()
    node = CodeNode(warm_sandboxes=0)
    source = "import time\ndef main(data):\n    time.sleep(60)\n"
    task = asyncio.create_task(node.execute(ctx(), {"source": source}, DATA))
    await asyncio.sleep(0.5)
    assert sandbox_processes()
    task.cancel()  # what Executor.cancel() does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sandbox_processes()
    # The executor's own timeout cancels execute() the same way.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await node.execute(ctx(), {"source": source}, DATA)
    assert not sandbox_processes()
    await node.close()


async def test_a_node_timeout_is_the_wall_clock_and_keeps_the_output(node: CodeNode) -> None:
    source = "import time\ndef main(data):\n    print('waiting')\n    time.sleep(60)\n"
    await node._pool.warm()  # a sandbox ready, as in a running engine: a cold start on a loaded
    await until(lambda: len(node._pool._idle) > 0)  # machine ate into the one-second bound
    started = time.monotonic()
    c = ctx(timeout=1.0)
    with pytest.raises(CodeFailure) as info:
        async with asyncio.timeout(1.0):  # as the executor runs execute()
            await node.execute(c, {"source": source}, DATA)
    assert info.value.error_type == "timeout"
    assert "timeout of 1s" in info.value.message
    assert info.value.run.stdout == "waiting\n"
    assert node.runs[c.idempotency_key].stdout == "waiting\n"
    assert time.monotonic() - started < 1.0


def test_the_runner_stays_standard_library_only() -> None:
    # -I keeps the project off sys.path in the sandbox: the runner must not import it.
    text = (ROOT / "linkflow_stream" / "nodes" / "sandbox_runner.py").read_text()
    assert "linkflow_stream" not in text.split('"""', 2)[2]
    assert sys.version_info >= (3, 11)


# --- where bubblewrap does not work ----------------------------------------------------------

FIXES = (
    "apt-get install bubblewrap",
    "--security-opt seccomp=unconfined",
    "--security-opt apparmor=unconfined",
    "--security-opt systempaths=unconfined",
    "sysctl kernel.apparmor_restrict_unprivileged_userns=0",
)


def assert_names_the_fix(failure: NodeFailure) -> None:
    assert isinstance(failure, SandboxUnavailableError)
    assert (failure.error_type, failure.retryable) == ("code_error", False)
    assert failure.message == UNAVAILABLE
    for fix in FIXES:
        assert fix in failure.message


async def warnings_of_a_node_without_a_sandbox(bwrap: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run a code node whose bubblewrap is ``bwrap`` three times; the warnings it logged."""
    node = CodeNode(bwrap=bwrap, warm_sandboxes=2)
    try:
        with caplog.at_level(logging.WARNING, logger="linkflow_stream.nodes.code"):
            checked = await node.self_check()  # what the engine does at start
            assert not checked.works
            for _ in range(2):
                with pytest.raises(NodeFailure) as info:
                    await node.execute(ctx(), {"source": "def main(data):\n    return 1\n"}, DATA)
                assert_names_the_fix(info.value)
        assert node.runs == {}
        assert not sandbox_processes()
    finally:
        await node.close()
    return [r.getMessage() for r in caplog.records if r.name == "linkflow_stream.nodes.code"]


async def test_without_bwrap_code_fails_with_a_code_error_that_names_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "no-such-bwrap")
    warnings = await warnings_of_a_node_without_a_sandbox(missing, caplog)
    assert len(warnings) == 1, warnings  # once a process, not once a run
    assert warnings[0].startswith(UNAVAILABLE)
    assert f"{missing!r} is not an executable file" in warnings[0]  # the probe's diagnostic
    with pytest.raises(NodeFailure) as info:
        await run_code("def main(data):\n    return 1\n", DATA, bwrap=missing)
    assert_names_the_fix(info.value)
    pool = SandboxPool(2, bwrap=missing)
    await pool.warm()  # starts nothing
    assert not pool._idle and not pool._starting
    await pool.close()


async def test_a_bwrap_that_may_not_create_namespaces_fails_the_same_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The real bwrap, refused namespaces: as root without capabilities, as in a container whose
    # seccomp profile refuses them to bwrap.
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if not IS_ROOT or bwrap is None or setpriv is None:
        pytest.skip("needs root, bwrap and setpriv to take the capabilities away from bwrap")
    wrapper = tmp_path / "bwrap-without-capabilities"
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --inh-caps=-all --bounding-set=-all -- {bwrap} "$@"\n')
    wrapper.chmod(0o755)
    warnings = await warnings_of_a_node_without_a_sandbox(str(wrapper), caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(UNAVAILABLE)
    assert "bwrap: " in warnings[0]  # bwrap's own words: what it could not do
