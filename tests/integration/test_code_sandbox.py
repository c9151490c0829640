"""The ``code`` node's sandbox with real processes: happy paths, and escapes that must be stopped.

Every escape test runs at each isolation level that works on this machine (``bwrap``, ``netns``,
``rlimits``; a level that does not work here is skipped and says so) unless the level does not
claim to stop that escape (``rlimits`` has no network isolation; only ``bwrap`` has a private
file system). After each attempt the test process must still be healthy: it can still run code,
open sockets and files, its own rlimits are untouched, and no sandbox process is left.

Levels below ``bwrap`` switch to a throwaway uid when the tests run as root; if the engine's
Python is then unreadable (e.g. under /root), the tests use the system's ``python3`` for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
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
from linkflow_stream.nodes.sandbox import (
    LEVELS,
    CodeFailure,
    CodeRun,
    Limits,
    SandboxPool,
    available_levels,
    default_interpreter,
    isolation_level,
    run_code,
)

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
DATA = {"input": {"a": 2}, "nodes": {"x": {"b": 3}}}


@dataclass(frozen=True)
class Setup:
    level: str
    interpreter: str

    async def run(self, source: str, data: Any = None, **limits: Any) -> CodeRun:
        return await run_code(
            source,
            DATA if data is None else data,
            Limits(**limits),
            isolation=self.level,
            interpreter=self.interpreter,
        )

    async def fail(self, source: str, data: Any = None, **limits: Any) -> CodeFailure:
        with pytest.raises(CodeFailure) as info:
            await self.run(source, data, **limits)
        return info.value


def _setups() -> list[Any]:
    candidates = [default_interpreter()]
    candidates += [p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)]
    params = []
    for level in LEVELS:
        python = next((p for p in candidates if level in available_levels(p)), None)
        marks = [] if python else [pytest.mark.skip(reason=f"isolation level {level} does not work here")]
        params.append(pytest.param(Setup(level, python or ""), id=level, marks=marks))
    return params


SETUPS = _setups()


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


@pytest.fixture(params=SETUPS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    """A level that works here; afterwards, the test process must be healthy."""
    before = {which: resource.getrlimit(which) for which in LIMITS_TO_KEEP}
    yield request.param
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


def default_setup() -> Setup:
    """The engine's Python at the level it gets here (what CodeNode uses)."""
    level = isolation_level()
    if level == "none":
        pytest.skip("no isolation level works for the engine's Python here (see the log)")
    return Setup(level, default_interpreter())


@pytest.fixture
async def node() -> AsyncIterator[CodeNode]:
    default_setup()
    n = CodeNode(warm_sandboxes=2)
    yield n
    await n.close()
    wait_no_sandbox_processes()


def ctx(timeout: float = 10.0) -> NodeContext:
    return NodeContext(f"e-{uuid.uuid4().hex[:8]}", "wf", "code1", 1, timeout)


# --- happy paths ---------------------------------------------------------------------------


async def test_this_machine_reports_its_isolation_level() -> None:
    level = isolation_level()
    assert level in (*LEVELS, "none")
    if level != "bwrap":
        pytest.skip(f"only {level!r} here; install bubblewrap (and allow user namespaces) for bwrap")


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
    assert run.isolation == isolation_level()
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
    failure = await default_setup().fail(f"def main(data):\n    {body}\n")
    assert failure.error_type == "code_error"
    assert words in failure.message


async def test_a_result_over_the_size_limit_is_a_resource_limit() -> None:
    setup = default_setup()
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
    default_setup()
    pool = SandboxPool(3)
    await pool.warm()
    await until(lambda: len(pool._idle) == 3)
    assert len(pool._idle) == 3
    assert sandbox_processes()
    await pool.close()
    wait_no_sandbox_processes()


# --- escapes -------------------------------------------------------------------------------


async def test_network_is_unreachable_even_on_loopback(setup: Setup) -> None:
    if setup.level == "rlimits":
        pytest.skip("rlimits has no network isolation")
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


@pytest.mark.parametrize("where", ["project", "root", "usr", "etc", "engine_home"])
async def test_writing_outside_the_temp_dir_fails(setup: Setup, where: str) -> None:
    if setup.level != "bwrap" and not IS_ROOT:
        pytest.skip("below bwrap, code runs as the engine's user and can write what it can")
    if setup.level != "bwrap" and where == "engine_home":
        pytest.skip("below bwrap, the engine's home is only protected by its permissions")
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


async def test_the_temp_dir_is_private_and_removed(setup: Setup) -> None:
    if setup.level != "bwrap":
        pytest.skip("only bwrap has a private /tmp; below it /tmp is the host's")
    name = f"/tmp/escape-{uuid.uuid4().hex}"  # noqa: S108 - the point is to try the host's /tmp
    source = (
        "import os, tempfile\n"
        "def main(data):\n"
        "    open(data['path'], 'w').write('escaped')\n"
        "    with open(os.path.join(tempfile.gettempdir(), 'scratch'), 'w') as f:\n"
        "        f.write('ok')\n"
        "    return {'cwd': os.getcwd(), 'home': os.environ['HOME'], 'listing': sorted(os.listdir('/tmp'))}\n"
    )
    try:
        run = await setup.run(source, {"path": name})
        listing = sorted([Path(name).name, "scratch"])
        assert run.result == {"cwd": "/tmp", "home": "/tmp", "listing": listing}  # noqa: S108
        assert not on_host(name)  # it went to the sandbox's own /tmp, gone with it
    finally:
        remove(name)
    await assert_healthy(setup)


async def test_the_temp_dir_is_the_working_dir_and_is_removed_afterwards(setup: Setup) -> None:
    source = (
        "import os\n"
        "def main(data):\n"
        "    open('file', 'w').write('x')\n"
        "    return {'cwd': os.getcwd(), 'home': os.environ['HOME'], 'tmp': os.environ['TMPDIR']}\n"
    )
    run = await setup.run(source)
    assert run.result["cwd"] == run.result["home"] == run.result["tmp"]
    if setup.level != "bwrap":
        assert run.result["cwd"].startswith(os.path.join(tempfile.gettempdir(), "linkflow-code-"))
        assert not on_host(run.result["cwd"])
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


async def test_other_processes_environments_are_unreadable(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setup.level != "bwrap" and not IS_ROOT:
        pytest.skip("below bwrap, code runs as the engine's user and can read /proc/<engine>/environ")
    monkeypatch.setenv("LINKFLOW_SECRET_TEST", "s3cr3t")
    source = (
        "import os\n"
        "def main(data):\n"
        "    found = []\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        "            if b's3cr3t' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "                found.append(pid)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return {'found': found, 'engine': os.path.exists(f\"/proc/{data['engine']}\")}\n"
    )
    run = await setup.run(source, {"engine": os.getpid()})
    assert run.result["found"] == []
    if setup.level == "bwrap" and os.getpid() > 100:
        assert run.result["engine"] is False  # a PID namespace of its own: the engine is not there
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
    # Enough processes even when the count is the engine's user's (below bwrap, not root).
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
    default_setup()
    for delay in (0, 0.005, 0.02):
        pool = SandboxPool(3)
        await pool.warm()
        await asyncio.sleep(delay)
        async with asyncio.timeout(10):
            await pool.close()
        wait_no_sandbox_processes()


async def test_cancelling_execute_like_the_executor_leaves_no_process() -> None:
    default_setup()
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


async def test_min_isolation_refuses_to_run_below_it() -> None:
    node = CodeNode(isolation="rlimits", min_isolation="bwrap", warm_sandboxes=0)
    with pytest.raises(NodeFailure) as info:
        await node.execute(ctx(), {"source": "def main(data):\n    return 1\n"}, DATA)
    assert info.value.error_type == "internal"
    assert "'bwrap' is required" in info.value.message
    assert not sandbox_processes()
    await node.close()


def test_the_runner_stays_standard_library_only() -> None:
    # -I keeps the project off sys.path in the sandbox: the runner must not import it.
    text = (ROOT / "linkflow_stream" / "nodes" / "sandbox_runner.py").read_text()
    assert "linkflow_stream" not in text.split('"""', 2)[2]
    assert sys.version_info >= (3, 11)
