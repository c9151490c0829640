"""Process isolation for untrusted Python: each run is a fresh interpreter in a bubblewrap sandbox.

``run_code(source, data, limits)`` starts ``python -I -S -B sandbox_runner.py`` (isolated mode, no
``site``, no bytecode writes) inside bubblewrap (Debian package ``bubblewrap``) with an explicit
minimal environment (``PATH``, ``LANG``, ``TMPDIR``, ``HOME``: nothing of the engine's, no
``LINKFLOW_*``), sends ``{source, data, limits}`` on its stdin and reads the result from a
dedicated pipe, so that ``print`` output (stdout/stderr, captured up to ``Limits.output_bytes``
each) never mixes with it.

What the sandbox guarantees, and why it is the only one (ADR 0020): user code cannot read the
engine's environment, secrets or files, and cannot open a socket. bwrap gives each run new mount,
PID, network (loopback only, nothing listening), IPC and UTS namespaces (plus a user namespace
when the engine is not root); a root file system made of read-only binds of ``/usr``, ``/lib*``, a
few ``/etc`` files and the Python install; a fresh ``/proc`` that shows the sandbox's processes
only; a minimal ``/dev``; and a size-limited tmpfs at ``/tmp`` as the only writable place (cwd,
``TMPDIR`` and ``HOME``; gone with the sandbox; a second one at ``/dev/shm``; the root and ``/dev``
are remounted read-only). ``--die-with-parent`` and ``--new-session``; no capabilities are left
once the runner has switched user. Weaker isolation (rlimits alone, or a network namespace over
the host's file system) would let the code read ``/proc/<engine>/environ`` or reach the network
and the broker, so there is none: where bwrap is missing or may not create namespaces (Docker's
default seccomp profile, AppArmor's user-namespace restriction), :func:`probe` says why and every
run fails with :class:`SandboxUnavailableError`, whose message names the fix.

Limits of every run: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (SIGXCPU, SIGKILL one second later),
``RLIMIT_NPROC`` (fork bombs), ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE`` (disk fill), no core dumps; a
wall-clock limit enforced here: SIGTERM to the code's processes ``Limits.kill_grace_seconds``
before it, then SIGKILL of the sandbox's PID namespace at it. Cancelling ``run_code``
kills the sandbox before ``CancelledError`` goes on.

When the engine runs as root, bwrap makes no user namespace and every run gets a random
throwaway uid (``RUN_UIDS``) instead: the process limit then counts that run alone (Linux never
enforces it for uid 0). When the engine is not root, the user namespace maps the engine's uid
and the process limit counts the engine's own threads too.

Start-up (bwrap, interpreter) is most of a cold run; ``SandboxPool`` keeps sandboxes started
ahead, each still used for one run only (figures: ``python -m bench.code_node``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkflow_stream.core.node_contract import NodeFailure

log = logging.getLogger(__name__)

BWRAP = "bwrap"
"""The bubblewrap executable by default: looked up on ``PATH``."""

RUNNER = Path(__file__).with_name("sandbox_runner.py")
RUNNER_IN_SANDBOX = "/sandbox_runner.py"
SANDBOX_TMP = "/tmp"  # noqa: S108 - inside the bwrap sandbox: a private tmpfs, not the host's /tmp
RUN_UIDS = range(1_600_000_000, 1_600_000_000 + 2**24)
"""Throwaway uids for runs when the engine is root: one picked at random per run."""

PROBE_TIMEOUT = 20.0
REAP_SECONDS = 5.0
OUTPUT_MARKER = "\n[... output truncated]"

UNAVAILABLE = (
    "code nodes cannot run on this worker: user code runs only inside a bubblewrap sandbox, and "
    "bubblewrap is not installed here or may not create namespaces. To fix it, install bubblewrap "
    "(Debian/Ubuntu: apt-get install bubblewrap); in a container, allow it user namespaces and a "
    "fresh /proc (Docker: --security-opt seccomp=unconfined --security-opt apparmor=unconfined "
    "--security-opt systempaths=unconfined); on an Ubuntu 23.10 or later host, allow unprivileged "
    "user namespaces (sysctl kernel.apparmor_restrict_unprivileged_userns=0). Then restart the engine."
)
"""What a code node fails with, and what the engine logs once at start, when bwrap does not work."""


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``wall_seconds`` is enforced by the parent, the rest by rlimits."""

    memory_mb: int = 256
    cpu_seconds: int = 5
    wall_seconds: float = 30.0
    processes: int = 32
    """RLIMIT_NPROC: processes and threads of the run's uid (of the engine's uid when not root)."""
    open_files: int = 64
    file_mb: int = 16
    """RLIMIT_FSIZE: the largest file the code may write."""
    tmp_mb: int = 64
    """Size of the private tmpfs (when bwrap has ``--size``)."""
    output_bytes: int = 64 * 1024
    """Kept of stdout and of stderr each; the rest is read and dropped."""
    result_bytes: int = 8 * 1024 * 1024
    """The largest JSON result accepted; a larger one fails the run with ``resource_limit``."""
    kill_grace_seconds: float = 0.0
    """Timeout escalation: SIGTERM this long before ``wall_seconds`` (at most half of it), SIGKILL
    at ``wall_seconds`` if the code is still running. 0: SIGKILL at ``wall_seconds``."""

    @property
    def term_seconds(self) -> float:
        """When the code gets SIGTERM: the wall clock less the grace (half of it at most)."""
        return self.wall_seconds - min(self.kill_grace_seconds, self.wall_seconds / 2)


@dataclass(frozen=True)
class CodeRun:
    """One run: main's return value (``None`` on failure) and what the run printed."""

    result: Any
    stdout: str
    stderr: str
    duration: float
    """Wall-clock seconds from sending the code to the end of the run (start-up not counted)."""
    cpu_seconds: float | None = None
    """CPU time of the sandboxed interpreter (and its reaped children); None if it was killed."""
    max_rss_kb: int | None = None
    """Peak resident memory of the interpreter; None if it was killed."""


class CodeFailure(NodeFailure):
    """A failed run; ``run`` keeps what it printed; ``stopped`` says how a run that ran out of
    time was stopped (``terminated (SIGTERM)`` or ``killed (SIGKILL) ...``), else ``None``."""

    def __init__(
        self,
        error_class: str,
        message: str,
        run: CodeRun,
        *,
        retryable: bool | None = None,
        stopped: str | None = None,
    ) -> None:
        super().__init__(error_class, message, retryable=retryable)
        self.run = run
        self.stopped = stopped


class SandboxUnavailableError(NodeFailure):
    """No code can run on this worker: bwrap is missing or may not create namespaces.

    ``code_error``, not ``internal``: what the workflow's author sees on the node must say what
    to do, and trying again on the same worker cannot help (not retryable). ``problem`` is the
    probe's own diagnostic, for the log.
    """

    def __init__(self, problem: str) -> None:
        super().__init__("code_error", UNAVAILABLE, retryable=False)
        self.problem = problem


@dataclass(frozen=True)
class SandboxProbe:
    """Whether a real run in a bwrap sandbox works here."""

    works: bool
    problem: str = ""
    """Why not, in the probe's words: bwrap's own error message, or where bwrap was looked for."""


@dataclass(frozen=True)
class _Tools:
    python: str
    python_roots: tuple[str, ...]
    bwrap: str | None
    """The resolved bwrap executable; None when there is none."""
    bwrap_size: bool
    root: bool


def default_interpreter() -> str:
    """The engine's own Python (resolved out of a venv: runs use ``-I -S``, no site-packages)."""
    return os.path.realpath(sys.executable)


@functools.cache
def _tools(python: str, bwrap: str) -> _Tools:
    roots = {str(Path(python).parent.parent)}
    if python == default_interpreter():
        roots.add(os.path.realpath(sys.base_prefix))
    found = shutil.which(bwrap)
    size = False
    if found:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            size = (
                "--size"
                in subprocess.run(  # noqa: S603 - fixed argv
                    [found, "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
                ).stdout
            )
    return _Tools(
        python=python,
        python_roots=tuple(sorted(r for r in roots if not _under(r, "/usr"))),
        bwrap=found,
        bwrap_size=size,
        root=os.geteuid() == 0,
    )


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _bwrap_argv(tools: _Tools, limits: Limits, workdir: str | None) -> list[str]:
    assert tools.bwrap is not None
    argv = [tools.bwrap, "--die-with-parent", "--new-session"]
    if tools.root:
        # No user namespace: the runner switches to a throwaway uid of the host, so that
        # RLIMIT_NPROC (never enforced for uid 0) counts this run's processes.
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all"]  # includes the user namespace an unprivileged bwrap needs
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for name in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", name, name]
    made: set[str] = set()
    for root in tools.python_roots:
        for parent in reversed(Path(root).parents):
            if str(parent) != "/" and str(parent) not in made:
                made.add(str(parent))  # bwrap would copy the host's modes (/root is 0700)
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", root, root]
    argv += ["--ro-bind", str(RUNNER), RUNNER_IN_SANDBOX, "--proc", "/proc", "--dev", "/dev"]
    if workdir is None:
        size = str(limits.tmp_mb * 2**20)
        # /dev/shm for multiprocessing's semaphores, sized like /tmp; the rest of /dev is read-only.
        argv += ["--size", size, "--perms", "1777", "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]  # noqa: S108
        argv += ["--size", size, "--perms", "1777", "--tmpfs", SANDBOX_TMP]
    else:
        argv += ["--remount-ro", "/dev", "--bind", workdir, SANDBOX_TMP]
    # The root is a tmpfs bwrap made, which a user namespace's owner could write to (unbounded).
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_TMP, "--"]
    return argv


def _command(
    tools: _Tools, limits: Limits, workdir: str | None, result_fd: int, uid: int | None
) -> list[str]:
    argv = [*_bwrap_argv(tools, limits, workdir), tools.python, "-I", "-S", "-B", RUNNER_IN_SANDBOX]
    argv += ["--result-fd", str(result_fd)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    return argv


def _env() -> dict[str, str]:
    """The whole environment of a run: nothing is inherited from the engine."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": SANDBOX_TMP,
        "HOME": SANDBOX_TMP,
    }


def _payload(source: str, data: Any, limits: Limits) -> bytes:
    wire_limits = {
        "memory_bytes": limits.memory_mb * 2**20,
        "cpu_seconds": limits.cpu_seconds,
        "processes": limits.processes,
        "open_files": limits.open_files,
        "file_bytes": limits.file_mb * 2**20,
    }
    return json.dumps({"source": source, "data": data, "limits": wire_limits}, allow_nan=False).encode()


def _setup(tools: _Tools) -> tuple[int | None, str | None]:
    """The run's uid (root only) and the host dir bound at ``/tmp`` (None: a tmpfs of bwrap's).

    A bwrap without ``--size`` would give the run an unbounded tmpfs, so it gets a private host
    dir (mode 0700, the run's uid's) instead, bounded by ``RLIMIT_FSIZE`` per file only.
    """
    uid = RUN_UIDS[secrets.randbelow(len(RUN_UIDS))] if tools.root else None
    if tools.bwrap_size:
        return uid, None
    workdir = tempfile.mkdtemp(prefix="linkflow-code-")  # mode 0700
    if uid is not None:
        os.chown(workdir, uid, uid)
    return uid, workdir


# --- does it work here? ----------------------------------------------------------------------

PROBE_SOURCE = "def main(data):\n    import textwrap\n\n    return data\n"
"""Imports after the runner has switched user: the Python install must be readable by then."""

_probes: dict[tuple[str, str], SandboxProbe] = {}
_probing = threading.Lock()


def probe(interpreter: str | None = None, bwrap: str = BWRAP) -> SandboxProbe:
    """Whether code can run here: a real run in a bwrap sandbox, once per process, interpreter and
    bwrap (some tens of milliseconds the first time). Callers at the same time share one probe."""
    key = (interpreter or default_interpreter(), bwrap)
    with _probing:
        if key not in _probes:
            _probes[key] = _probe(*key)
        return _probes[key]


async def probe_async(interpreter: str | None = None, bwrap: str = BWRAP) -> SandboxProbe:
    """:func:`probe` without blocking the loop; a cancelled caller waits for the probe to end,
    so that no probe process outlives it."""
    key = (interpreter or default_interpreter(), bwrap)
    if key in _probes:
        return _probes[key]
    probing = asyncio.ensure_future(asyncio.to_thread(probe, *key))
    try:
        return await asyncio.shield(probing)
    except asyncio.CancelledError:
        await asyncio.wait([probing])
        raise


def _probe(python: str, bwrap: str) -> SandboxProbe:
    tools = _tools(python, bwrap)
    if tools.bwrap is None:
        path = os.environ.get("PATH", "")
        where = "is not an executable file" if "/" in bwrap else f"is not on PATH ({path})"
        return SandboxProbe(False, f"no bubblewrap: {bwrap!r} {where}")
    uid, workdir = _setup(tools)
    result_r, result_w = os.pipe()
    try:
        proc = subprocess.run(  # noqa: S603 - our own argv
            _command(tools, Limits(), workdir, result_w, uid),
            input=_payload(PROBE_SOURCE, "probe", Limits()),
            env=_env(),
            cwd="/",
            capture_output=True,
            pass_fds=(result_w,),
            timeout=PROBE_TIMEOUT,
            check=False,
            start_new_session=True,
        )
        os.close(result_w)
        result_w = -1
        with os.fdopen(result_r, "rb") as pipe:
            result_r = -1
            answer = pipe.read()
    except (OSError, subprocess.SubprocessError) as exc:
        return SandboxProbe(False, f"{tools.bwrap}: {exc}")
    finally:
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(ValueError):
        document = json.loads(answer[1:]) if answer.startswith(b"R") else None
        if isinstance(document, dict) and document.get("ok") is True and document.get("result") == "probe":
            return SandboxProbe(True)
    said = proc.stderr.decode(errors="replace").strip() or answer.decode(errors="replace")
    return SandboxProbe(False, f"{tools.bwrap} (exit {proc.returncode}): {said[-1000:]}")


# --- process bookkeeping ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(name))
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class _Capture:
    """A stream read to its end, of which the first ``limit`` bytes are kept."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    first: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the first byte arrives or the stream ends."""

    async def drain(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._drain(reader)
        finally:
            self.first.set()

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            self.first.set()
            self.total += len(chunk)
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def text(self) -> str:
        text = self.data.decode(errors="replace")
        return text + OUTPUT_MARKER if self.total > self.limit else text


# --- one run -------------------------------------------------------------------------------


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Says when the process itself has exited: ``Process.wait()`` also waits for its pipes to
    close, which processes the code forked (and that still hold them) can put off indefinitely.
    """

    def __init__(self, exited: asyncio.Event) -> None:
        super().__init__(limit=2**16, loop=asyncio.get_running_loop())
        self._exited_event = exited

    def process_exited(self) -> None:
        super().process_exited()
        self._exited_event.set()


class Sandbox:
    """One sandboxed interpreter, started ahead and used for exactly one run.

    ``start()`` brings the process up to the point where it waits for its payload on stdin;
    ``run()`` sends the code and data and collects the outcome; ``close()`` kills whatever is
    left and removes the temp dir (always call it; ``run_code`` does all three).
    """

    def __init__(
        self, *, interpreter: str | None = None, bwrap: str = BWRAP, tmp_mb: int = Limits.tmp_mb
    ) -> None:
        """Raises ``SandboxUnavailableError`` when there is no ``bwrap`` executable; whether it
        works here is :func:`probe`'s question (``run_code`` and ``SandboxPool`` ask it first)."""
        self.tools = _tools(interpreter or default_interpreter(), bwrap)
        if self.tools.bwrap is None:
            raise SandboxUnavailableError(f"no bubblewrap: {bwrap!r} not found")
        self.tmp_mb = tmp_mb
        self.uid: int | None = None
        self.workdir: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.started = time.monotonic()
        self.stdout = _Capture(Limits.output_bytes)
        self.stderr = _Capture(Limits.output_bytes)
        self.result = _Capture(Limits.result_bytes + 1)
        self._io: list[asyncio.Task[None]] = []
        self._transport: asyncio.ReadTransport | None = None
        self._used = False
        self._exited = asyncio.Event()

    async def start(self) -> None:
        """Start the process; returns once it runs (not necessarily ready: see ``ready()``).

        Not interruptible: cancelled, it finishes starting first, so that ``close()`` ends the
        sandbox in order. (asyncio's own clean-up of a cancelled spawn SIGKILLs bwrap at once,
        which can orphan the sandbox before ``--die-with-parent`` is armed in it, and then
        waits for pipes that orphan holds open: for ever.)
        """
        starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await asyncio.wait([starting], timeout=REAP_SECONDS)
            raise

    async def _start(self) -> None:
        self.uid, self.workdir = _setup(self.tools)
        loop = asyncio.get_running_loop()
        # The result channel is a socket, not a pipe: closing the transport of a pipe's file
        # object, uvloop closes the descriptor and then the file object, which closes the same
        # number again (another thread's file by then, perhaps); a socket it detaches instead.
        reading, writing = socket.socketpair()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(self._exited),
                *_command(self.tools, Limits(tmp_mb=self.tmp_mb), self.workdir, writing.fileno(), self.uid),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(writing.fileno(),),
                env=_env(),
                cwd="/",
                start_new_session=True,
            )
            self.proc = asyncio.subprocess.Process(transport, protocol, loop)
        except BaseException:
            reading.close()
            raise
        finally:
            writing.close()
        proc = self.proc
        assert proc.stdout is not None
        assert proc.stderr is not None
        reader = asyncio.StreamReader()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), reading
        )
        self._io = [
            asyncio.create_task(self.stdout.drain(proc.stdout)),
            asyncio.create_task(self.stderr.drain(proc.stderr)),
            asyncio.create_task(self.result.drain(reader)),
        ]

    async def ready(self) -> None:
        """Wait until the interpreter is up and waiting for its payload (or already dead)."""
        await self.result.first.wait()

    async def run(self, source: str, data: Any, limits: Limits = Limits()) -> CodeRun:
        """Run ``main(data)``; raises ``CodeFailure`` (see :func:`run_code`). Once per sandbox."""
        if self._used or self.proc is None:
            raise RuntimeError("a sandbox runs code once, after start()")
        self._used = True
        try:
            payload = _payload(source, data, limits)
        except (TypeError, ValueError) as exc:
            raise NodeFailure("validation", f"the node's data is not JSON: {exc}") from exc
        proc = self.proc
        assert proc.stdin is not None
        self.started = time.monotonic()
        self.stdout.limit = self.stderr.limit = limits.output_bytes
        self.result.limit = limits.result_bytes + 1

        async def feed(stdin: asyncio.StreamWriter) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.write(payload)
                await stdin.drain()
            stdin.close()

        self._io.append(asyncio.create_task(feed(proc.stdin)))
        stopped = await self._run_until(limits)
        await self._terminate()
        await self.finish()
        # Every holder of the pipes is dead now: what is left to read is buffered data.
        _, pending = await asyncio.wait(self._io, timeout=REAP_SECONDS)
        if pending:
            log.error("code sandbox: output pipes still open after the sandbox ended")
        if stopped is not None:
            failure = self.fail(
                "timeout", f"the code did not finish within {limits.wall_seconds:g}s (wall clock); {stopped}"
            )
            failure.stopped = stopped
            raise failure
        return self._outcome(limits, proc.returncode)

    async def _run_until(self, limits: Limits) -> str | None:
        """Wait for the run to end; past ``limits.term_seconds``, SIGTERM every process of the code,
        and past ``limits.wall_seconds`` leave it to the SIGKILL of ``_terminate``. ``None`` if it
        ended in time, else how it was stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limits.term_seconds):
                await self._exited.wait()
            return None
        grace = limits.wall_seconds - limits.term_seconds
        if grace <= 0 or not self.signal_code(signal.SIGTERM):
            return "killed (SIGKILL)"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._exited.wait()
            return "terminated (SIGTERM)"
        return f"killed (SIGKILL): it was still running {grace:g}s after SIGTERM"

    def signal_code(self, signum: int) -> bool:
        """Send ``signum`` to every process of the code (the interpreter and what it started: all
        below the PID namespace's init, which bwrap runs and which forwards nothing); False if
        there was none."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return False
        sent = False
        for init in _children(proc.pid):
            stack = _children(init)
            while stack:
                pid = stack.pop()
                stack.extend(_children(pid))
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
                    sent = True
        return sent

    async def close(self) -> None:
        """Kill and reap the sandbox, stop reading its pipes and remove its temp dir.

        Safe against a second cancellation while it runs: the kill is sent first, and the wait
        for the processes to be gone goes on behind a shield.
        """
        await self._terminate()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.shield(asyncio.wait_for(self.finish(), REAP_SECONDS))
        for task in self._io:
            task.cancel()
        await asyncio.gather(*self._io, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    async def _terminate(self) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                # Until the runner is up, bwrap's sandbox process may not have armed
                # --die-with-parent yet: killed now, bwrap could leave it orphaned. Once the
                # runner has said "R" (or the pipe has closed), the kill below is safe.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.result.first.wait()), REAP_SECONDS)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the sandbox; safe to call at any time, more than once; ``finish()`` reaps it.

        Call it only once the runner is up (``ready()``); ``close()`` does.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            # bwrap's child is the PID namespace's init: killing it makes the kernel kill every
            # process of the sandbox, then bwrap reaps it and exits. Only if there is no such
            # child yet is bwrap itself killed (--die-with-parent takes the sandbox with it).
            children = _children(proc.pid)
            for child in children:
                _kill(child)
            if not children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def finish(self) -> None:
        """Reap the sandbox (its PID namespace takes every process the code started with it)."""
        if self.proc is None:
            return
        await self._exited.wait()
        await self.proc.wait()  # also waits for the pipes to close: nothing holds them any more

    def record(self, result: Any = None, usage: Any = None) -> CodeRun:
        cpu_us = usage.get("cpu_us") if isinstance(usage, dict) else None
        rss = usage.get("max_rss_kb") if isinstance(usage, dict) else None
        return CodeRun(
            result=result,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            duration=time.monotonic() - self.started,
            cpu_seconds=cpu_us / 1_000_000 if isinstance(cpu_us, int) else None,
            max_rss_kb=rss if isinstance(rss, int) else None,
        )

    def fail(
        self, error_class: str, message: str, *, retryable: bool | None = None, usage: Any = None
    ) -> CodeFailure:
        return CodeFailure(error_class, message, self.record(usage=usage), retryable=retryable)

    def _outcome(self, limits: Limits, returncode: int | None) -> CodeRun:
        raw = bytes(self.result.data)
        if not raw.startswith(b"R"):
            raise self.fail(
                "internal",
                f"the sandbox did not start (exit {returncode}): " + self.stderr.text().strip()[-1000:],
                retryable=True,
            )
        if self.result.total > limits.result_bytes + 1:
            raise self.fail(
                "resource_limit", f"the result is larger than {limits.result_bytes} bytes of JSON"
            )
        if len(raw) > 1:
            try:
                document = json.loads(raw[1:])
            except ValueError:
                document = None  # cut short by a kill, or written to the pipe by the code itself
            if isinstance(document, dict) and document.get("ok") is True and "result" in document:
                return self.record(document["result"], document.get("usage"))
            if isinstance(document, dict) and document.get("ok") is False:
                error_class = str(document.get("error_class"))
                if error_class not in ("code_error", "resource_limit", "internal"):
                    error_class = "code_error"
                raise self.fail(error_class, str(document.get("message")), usage=document.get("usage"))
        signum = _signal_of(returncode)
        if signum in (signal.SIGKILL, signal.SIGXCPU):
            raise self.fail(
                "resource_limit",
                f"the code was killed by {signal.Signals(signum).name}: it went over its CPU time "
                f"({limits.cpu_seconds}s) or memory ({limits.memory_mb} MB) limit",
            )
        if signum is not None:
            name = signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
            raise self.fail("code_error", f"the code crashed with {name}")
        raise self.fail("code_error", f"the code ended its process (exit {returncode}) before main returned")


def _signal_of(returncode: int | None) -> int | None:
    """The signal that ended the sandboxed interpreter, if one did (negative: bwrap itself,
    killed before it had a child)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if returncode > 128:
        return returncode - 128  # bwrap exits 128+N when its child dies of signal N
    return None


async def run_code(
    source: str,
    data: Any,
    limits: Limits = Limits(),
    *,
    interpreter: str | None = None,
    bwrap: str = BWRAP,
) -> CodeRun:
    """Run ``main(data)`` of ``source`` in a fresh sandboxed process; returns its result and output.

    Raises ``CodeFailure`` (a ``NodeFailure``): ``code_error`` for an exception in the code, a
    non-JSON result or an early exit; ``resource_limit`` for memory, CPU or result size;
    ``timeout`` for the wall clock (``limits.wall_seconds``); ``internal`` (retryable) when a
    sandbox that worked before cannot start. ``SandboxUnavailableError`` (``code_error``, not
    retryable) when bwrap does not work here at all (:func:`probe`). Cancelling it kills the
    sandbox before ``CancelledError`` propagates. ``interpreter`` is the Python to run (default:
    the engine's); ``bwrap`` the bubblewrap executable (a name on ``PATH`` or a path).
    """
    python = interpreter or default_interpreter()
    checked = await probe_async(python, bwrap)
    if not checked.works:
        raise SandboxUnavailableError(checked.problem)
    sandbox = Sandbox(interpreter=python, bwrap=bwrap, tmp_mb=limits.tmp_mb)
    try:
        await sandbox.start()
        return await sandbox.run(source, data, limits)
    finally:
        await sandbox.close()


class SandboxPool:
    """Sandboxes started ahead of need; each still runs code once and is then thrown away.

    A cold run pays for namespaces and interpreter start-up (see ``bench/code_node.py``); a
    pre-started sandbox already waits on stdin for its payload, so a run costs only the code.
    ``size`` sandboxes are kept ready once the first run has happened (or after ``warm()``);
    every run takes one and, once done, starts a replacement in the background; when none is
    ready the run starts its own. ``size=0`` gives plain cold runs. A pool belongs to the event loop it was
    first used in; ``close()`` it before that loop ends.
    """

    def __init__(
        self,
        size: int = 2,
        *,
        interpreter: str | None = None,
        bwrap: str = BWRAP,
        tmp_mb: int = Limits.tmp_mb,
    ) -> None:
        self.size = size
        self.interpreter = interpreter or default_interpreter()
        self.bwrap = bwrap
        self.tmp_mb = tmp_mb
        self._idle: list[Sandbox] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def probe(self) -> SandboxProbe:
        """Whether this pool's sandboxes work here (:func:`probe`, once per process)."""
        return await probe_async(self.interpreter, self.bwrap)

    async def warm(self) -> None:
        """Start filling the pool now rather than at the first run (if sandboxes work here)."""
        if (await self.probe()).works:
            self._bind()
            self._refill()

    async def run(self, source: str, data: Any, limits: Limits = Limits()) -> CodeRun:
        """Like :func:`run_code`, on a pre-started sandbox when one is ready."""
        checked = await self.probe()
        if not checked.works:
            raise SandboxUnavailableError(checked.problem)
        self._bind()
        sandbox = self._take()
        try:
            if sandbox is None:
                sandbox = self._new()
                await sandbox.start()
            return await sandbox.run(source, data, limits)
        finally:
            if sandbox is not None:
                await sandbox.close()
            self._refill()  # after the run, so that starting a replacement does not slow it down

    async def close(self) -> None:
        """Kill every pre-started sandbox; the pool starts no more."""
        self._closed = True
        await asyncio.gather(*self._starting, return_exceptions=True)  # they see _closed
        idle, self._idle = self._idle, []
        for sandbox in idle:
            await sandbox.close()

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                log.warning("code sandbox pool moved to another event loop; dropping its sandboxes")
                for sandbox in self._idle:
                    sandbox.kill()
                self._idle, self._starting = [], set()
            self._loop = loop

    def _take(self) -> Sandbox | None:
        while self._idle:
            sandbox = self._idle.pop(0)
            proc = sandbox.proc
            if proc is not None and proc.returncode is None and sandbox.result.data == b"R":
                return sandbox
            self._spawn(sandbox.close())  # died while waiting: discard it
        return None

    def _refill(self) -> None:
        if self._closed:
            return
        for _ in range(self.size - len(self._idle) - len(self._starting)):
            self._spawn(self._start_one())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _new(self) -> Sandbox:
        return Sandbox(interpreter=self.interpreter, bwrap=self.bwrap, tmp_mb=self.tmp_mb)

    async def _start_one(self) -> None:
        sandbox = self._new()
        try:
            await sandbox.start()
            await sandbox.ready()
        except Exception:
            log.exception("code sandbox: could not pre-start a sandbox")
            await sandbox.close()
            return
        except BaseException:
            await sandbox.close()
            raise
        proc = sandbox.proc
        if self._closed or proc is None or proc.returncode is not None or sandbox.result.data != b"R":
            await sandbox.close()
            return
        self._idle.append(sandbox)
