"""``code``: a user's Python ``main(data)``, run in a sandboxed process; its return value is the output.

Config: ``{"source": "def main(data):\\n    return ...", "memory_mb": 256, "cpu_seconds": 5,
"kill_grace_seconds": 2}``.
``main`` receives ``{"input", "nodes"}`` and must return JSON (dicts, lists, strings, numbers,
booleans, ``None``; tuples become lists, non-string keys strings). The wall clock is the node's
timeout (``timeout_seconds`` of the node, else ``default_timeout_seconds``): the sandbox is
stopped a little before it (10 %, at most 0.5 s) so that the attempt's output is still recorded.
Stopping escalates: SIGTERM to the code's processes ``kill_grace_seconds`` (config, else
``LINKFLOW_CODE_KILL_GRACE_SECONDS``, default 2; at most half the wall clock) before that point,
so that ``main`` may clean up in a SIGTERM handler, then SIGKILL at it. The ``timeout`` failure
says which ended the run: ``...; terminated (SIGTERM)`` or ``...; killed (SIGKILL): it was still
running 2s after SIGTERM``.

Output and logs: the node's output is exactly ``main``'s return value, so downstream nodes see
what the user returned and no wrapper. What the code printed is not output: each attempt's
``CodeRun`` (stdout and stderr, capped at 64 KiB each, and the duration) is
kept in ``CodeNode.runs`` under ``ctx.idempotency_key`` (the last ``keep_runs`` attempts), passed
to the ``on_run`` callback, and logged at DEBUG; a failure's ``CodeFailure.run`` has the same.
The sandbox's CPU time and peak memory go to ``ctx.usage`` (``cpu_us``, ``max_rss_kb``).

Failures: ``code_error`` (an exception in the code, with its type, message and traceback in line
numbers of ``config.source``; a result that is not JSON; sys.exit), ``resource_limit`` (memory,
CPU time, result size; a fork bomb ends as ``code_error`` when fork() fails, or as
``resource_limit``), ``timeout`` (wall clock), and on cancellation the sandbox is killed before
``CancelledError`` goes on. How a run is isolated is described in ``linkflow_stream.nodes.sandbox``.

User code runs only inside bubblewrap (ADR 0020). Where bwrap is missing or may not create
namespaces, every attempt fails with ``code_error`` (not retryable) and a message that names the
fix (``sandbox.UNAVAILABLE``); the engine calls ``self_check()`` at start so that the same
message, with the probe's diagnostic, is logged once as a WARNING before any workflow needs it.
"""

from __future__ import annotations

import ast
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.nodes.sandbox import (
    BWRAP,
    UNAVAILABLE,
    CodeFailure,
    CodeRun,
    Limits,
    SandboxPool,
    SandboxProbe,
    SandboxUnavailableError,
    probe,
    run_code,
)

__all__ = [
    "CodeFailure",
    "CodeNode",
    "CodeRun",
    "Limits",
    "SandboxProbe",
    "SandboxUnavailableError",
    "probe",
    "run_code",
]

log = logging.getLogger(__name__)

FIELDS = frozenset({"source", "memory_mb", "cpu_seconds", "kill_grace_seconds"})
MEMORY_MB = (32, 256, 1024)
"""Smallest, default and largest ``memory_mb``."""
CPU_SECONDS = (1, 5, 60)
"""Smallest, default and largest ``cpu_seconds``."""
MAX_KILL_GRACE_SECONDS = 60.0
"""Largest ``kill_grace_seconds``."""


def _kill_grace(config: dict[str, Any], default: float) -> float:
    value = config.get("kill_grace_seconds", default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_KILL_GRACE_SECONDS
    ):
        raise ConfigError(
            "kill_grace_seconds", f"must be a number of seconds from 0 to {MAX_KILL_GRACE_SECONDS:g}"
        )
    return float(value)


def _bounded_int(config: dict[str, Any], name: str, bounds: tuple[int, int, int]) -> int:
    low, default, high = bounds
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}")
    return value


def _takes_one_argument(args: ast.arguments) -> bool:
    positional = [*args.posonlyargs, *args.args]
    required_keywords = [a for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    fits_one = len(positional) >= 1 or args.vararg is not None
    return fits_one and len(positional) - len(args.defaults) <= 1 and not required_keywords


def check_source(source: Any) -> None:
    """Raise ``ConfigError("source", ...)`` unless ``source`` compiles and defines ``main(data)``."""
    if not isinstance(source, str):
        raise ConfigError("source", "Python source that defines main(data) is required")
    try:
        compile(source, "<code>", "exec")
        tree = ast.parse(source, "<code>")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = f": {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        raise ConfigError("source", f"syntax error at {where}: {exc.msg}{text}") from exc
    except ValueError as exc:  # e.g. a NUL character
        raise ConfigError("source", str(exc)) from exc
    mains = [
        n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "main"
    ]
    if not mains:
        raise ConfigError("source", "must define a top-level function main(data)")
    main = mains[-1]
    if isinstance(main, ast.AsyncFunctionDef):
        raise ConfigError("source", f"line {main.lineno}: main must be a plain def, not async def")
    if not _takes_one_argument(main.args):
        raise ConfigError("source", f"line {main.lineno}: main must take exactly one argument (data)")


class CodeNode:
    type_name: ClassVar[str] = "code"
    dispatch: ClassVar[Dispatch] = Dispatch.TASK

    def __init__(
        self,
        *,
        default_timeout_seconds: float = 30.0,
        warm_sandboxes: int = 2,
        bwrap: str = BWRAP,
        interpreter: str | None = None,
        keep_runs: int = 256,
        on_run: Callable[[NodeContext, CodeRun], None] | None = None,
        kill_grace_seconds: float = 2.0,
    ) -> None:
        """``warm_sandboxes``: pre-started sandboxes kept ready (0: every run starts cold).
        ``bwrap``: the bubblewrap executable, a name on ``PATH`` or a path.
        ``interpreter``: the Python for runs (default: the engine's own, without site-packages).
        ``keep_runs``: how many attempts' ``CodeRun`` records ``runs`` keeps.
        ``on_run``: called with every attempt's record (success or failure), e.g. to store logs.
        ``kill_grace_seconds``: SIGTERM comes this long before the end of the node's time, SIGKILL
        at its end (``LINKFLOW_CODE_KILL_GRACE_SECONDS``; a node's config may set its own).
        """
        self.default_timeout_seconds = default_timeout_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.keep_runs = keep_runs
        self.on_run = on_run
        self.runs: OrderedDict[str, CodeRun] = OrderedDict()
        self._pool = SandboxPool(warm_sandboxes, interpreter=interpreter, bwrap=bwrap)
        self._announced = False

    def validate(self, config: dict[str, Any]) -> None:
        check_source(config.get("source"))
        _bounded_int(config, "memory_mb", MEMORY_MB)
        _bounded_int(config, "cpu_seconds", CPU_SECONDS)
        _kill_grace(config, self.kill_grace_seconds)
        unknown = set(config) - FIELDS
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field")

    async def self_check(self) -> SandboxProbe:
        """Probe the sandbox; if code cannot run here, log why and how to fix it (once a process).

        The engine calls it at start, in the background, so that an operator reads the fix
        in the start-up log rather than on a failed node; a run calls it too, so the message
        is logged once whichever comes first. Nothing is logged when the sandbox works.
        """
        checked = await self._pool.probe()
        if not checked.works and not self._announced:
            self._announced = True
            log.warning("%s (the sandbox probe said: %s)", UNAVAILABLE, checked.problem)
        return checked

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        source = config.get("source")
        if not isinstance(source, str):
            raise NodeFailure(
                "validation", "config.source: Python source that defines main(data) is required"
            )
        try:
            limits = Limits(
                memory_mb=_bounded_int(config, "memory_mb", MEMORY_MB),
                cpu_seconds=_bounded_int(config, "cpu_seconds", CPU_SECONDS),
                # A little under the executor's own timeout of the attempt, so that the run is
                # stopped here, with what it printed kept, rather than cancelled from outside.
                wall_seconds=max(ctx.timeout_seconds * 0.9, ctx.timeout_seconds - 0.5),
                kill_grace_seconds=_kill_grace(config, self.kill_grace_seconds),
            )
        except ConfigError as exc:
            raise NodeFailure("validation", exc.message) from exc
        await self.self_check()  # the start-up warning, once; the pool refuses to run without bwrap
        try:
            run = await self._pool.run(source, data, limits)
        except CodeFailure as exc:
            self._record(ctx, exc.run)
            if exc.error_type == "timeout":
                message = f"the code did not finish within the node's timeout of {ctx.timeout_seconds:g}s"
                if exc.stopped:
                    message += f"; {exc.stopped}"
                raise CodeFailure("timeout", message, exc.run, stopped=exc.stopped) from exc
            raise
        self._record(ctx, run)
        return run.result

    async def close(self) -> None:
        """Kill the pre-started sandboxes (call at shutdown, in the engine's event loop)."""
        await self._pool.close()

    def _record(self, ctx: NodeContext, run: CodeRun) -> None:
        ctx.logs.update(
            {name: text for name, text in (("stdout", run.stdout), ("stderr", run.stderr)) if text}
        )
        if run.cpu_seconds is not None:
            ctx.usage["cpu_us"] = ctx.usage.get("cpu_us", 0) + round(run.cpu_seconds * 1_000_000)
        if run.max_rss_kb is not None:
            ctx.usage["max_rss_kb"] = max(ctx.usage.get("max_rss_kb", 0), run.max_rss_kb)
        key = ctx.idempotency_key
        self.runs[key] = run
        self.runs.move_to_end(key)
        while len(self.runs) > self.keep_runs:
            self.runs.popitem(last=False)
        log.debug(
            "code %s: %.1f ms, stdout %r, stderr %r",
            key,
            run.duration * 1000,
            run.stdout[:200],
            run.stderr[:200],
        )
        if self.on_run is not None:
            try:
                self.on_run(ctx, run)
            except Exception:
                log.exception("code node: the on_run callback failed")
