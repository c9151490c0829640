"""The program a code sandbox runs: one user ``main(data)`` call in a fresh interpreter.

Started by :mod:`linkflow_stream.nodes.sandbox` inside bubblewrap as ``python -I -S -B
sandbox_runner.py --result-fd N [--uid U]``; it imports nothing but the standard library (``-I``
keeps the engine's packages off ``sys.path``). Protocol:

* stdin: one JSON document ``{"source", "data", "limits"}``; stdin is ``/dev/null`` afterwards;
* the result fd: the byte ``R`` as soon as the interpreter is up (so the parent can tell "the
  sandbox did not start" from "the code died"), then one JSON document, ``{"ok": true, "usage":
  ..., "result": ...}`` or ``{"ok": false, "usage": ..., "error_class": ..., "message": ...}``
  (``usage``: ``cpu_us`` and ``max_rss_kb``);
* stdout and stderr belong to the user's code (``print`` goes there).

Before any user code runs it lowers its own rlimits (memory, CPU, processes, files, core dumps)
and drops to ``--uid`` when it starts as root. No_new_privs and death with the engine come from
bwrap, as do the namespaces.

Start-up time is most of a run's cost, so the happy path imports only C modules that an
interpreter has anyway or loads fast (``_json``, ``_signal``, ``resource``): ``json``, ``signal``
and ``typing`` would each pull in ``re`` or ``enum`` and double the interpreter's start-up.
``traceback`` and ``linecache`` are imported when there is an error to describe.
"""

from __future__ import annotations

import _json
import io
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

_signal: Any = __import__("_signal")  # no stub in typeshed; ``signal`` would import ``enum``

FILENAME = "<code>"
MAX_MESSAGE = 4000
TRACEBACK_FRAMES = 8


class CpuLimitExceededError(BaseException):
    """Raised by the SIGXCPU handler; a BaseException so ``except Exception`` in user code cannot eat it."""


class _DecodeContext:
    """What ``_json.make_scanner`` reads off a ``json.JSONDecoder``: strict JSON, plain types."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]  # the stub wants a scanner

MAX_FD = 1 << 20
"""Above any descriptor number a process here holds (``close_range`` covers the span at once)."""
_result_fd = -1
_pid = -1
_reporting = False
_source = ""


def _dumps(value: object) -> str:
    """``json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))``."""
    # A fresh encoder each time: one that raised may keep stale entries in its cycle markers.
    encode = _json.make_encoder({}, _not_json, _json.encode_basestring, None, ":", ",", False, False, False)
    return "".join(encode(value, 0))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _usage() -> str:
    """What the run used, as a JSON object: CPU time (µs, with its children) and peak memory."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    return f'{{"cpu_us":{int(cpu * 1_000_000)},"max_rss_kb":{max(me.ru_maxrss, children.ru_maxrss)}}}'


def _finish(document: bytes) -> NoReturn:
    """Send the result document and exit at once (user threads are not waited for)."""
    global _reporting
    if os.getpid() != _pid:  # a process the user's code forked: it reports nothing
        os._exit(1)
    _reporting = True
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is one import more in every run
            stream.flush()
        except BaseException:  # noqa: S110, BLE001 - the user may have closed or replaced it
            pass
    _write_all(_result_fd, document)
    os._exit(0)


def _fail(error_class: str, message: str) -> NoReturn:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE // 2] + "\n[...]\n" + message[-MAX_MESSAGE // 2 :]
    document = _dumps({"ok": False, "error_class": error_class, "message": message})
    _finish(f'{{"usage":{_usage()},{document[1:]}'.encode())


def _on_xcpu(signum: int, frame: object) -> None:
    if not _reporting:
        raise CpuLimitExceededError


def _describe(exc: BaseException) -> str:
    """``Type: message`` first, then the last traceback lines from the user's source on."""
    import linecache
    import traceback

    linecache.cache[FILENAME] = (len(_source), None, _source.splitlines(True), FILENAME)
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    headline = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if tb is None:
        return headline
    lines = traceback.format_exception(type(exc), exc, tb, limit=-TRACEBACK_FRAMES)
    return f"{headline}\n\n{''.join(lines).rstrip()}"


def _set_limits(limits: dict[str, int]) -> None:
    cpu = limits["cpu_seconds"]
    pairs = {
        resource.RLIMIT_AS: (limits["memory_bytes"],) * 2,
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.RLIMIT_NPROC: (limits["processes"],) * 2,
        resource.RLIMIT_NOFILE: (limits["open_files"],) * 2,
        resource.RLIMIT_FSIZE: (limits["file_bytes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in pairs.items():
        ceiling = resource.getrlimit(which)[1]  # limits can only be lowered
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))


def _options(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs."""
    return {argv[i].removeprefix("--"): argv[i + 1] for i in range(0, len(argv) - 1, 2)}


def _confine(options: dict[str, str], limits: dict[str, int]) -> None:
    _set_limits(limits)
    if "uid" in options and os.geteuid() == 0:
        uid = int(options["uid"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # leaves no capabilities: the rlimits above cannot be raised again


def _read_payload() -> dict[str, Any]:
    text = sys.stdin.buffer.read().decode()
    payload, _ = _scan(text, 0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return payload  # type: ignore[no-any-return]


def _close_inherited(keep: int) -> None:
    """Close every descriptor above stderr but ``keep`` before any user code runs. Python's own
    spawn closes what the engine inherited (``close_fds``); uvloop's (libuv) does not, and bwrap
    passes on whatever it is given: a descriptor the engine's parent left open (a shell's
    ``exec 3<file``, a supervisor's socket) would be readable by the code."""
    os.closerange(3, keep)
    os.closerange(keep + 1, MAX_FD)


def main() -> NoReturn:
    global _result_fd, _pid, _source
    options = _options(sys.argv[1:])
    _result_fd = int(options["result-fd"])
    _close_inherited(_result_fd)
    _pid = os.getpid()
    os.set_inheritable(_result_fd, False)
    _write_all(_result_fd, b"R")

    payload = _read_payload()  # waits here when pre-started; nothing of the run is known before
    limits: dict[str, int] = payload["limits"]
    _source = payload["source"]
    data = payload["data"]

    try:
        _confine(options, limits)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, no user code has run
        _fail("internal", f"the sandbox could not apply its limits: {type(exc).__name__}: {exc}")
    _signal.signal(_signal.SIGXCPU, _on_xcpu)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    cpu_message = f"the code used more than its {limits['cpu_seconds']}s of CPU time"

    try:
        code = compile(_source, FILENAME, "exec")
        namespace: dict[str, Any] = {"__name__": "__code__", "__builtins__": __builtins__}
        exec(code, namespace)  # noqa: S102 - running the user's code is the point; the sandbox contains it
        entry = namespace.get("main")
        if not callable(entry):
            _fail("code_error", "the source defines no function main(data)")
        value = entry(data)
    except CpuLimitExceededError:
        _fail("resource_limit", cpu_message)
    except MemoryError as exc:
        message = f"the code ran out of memory (limit {limits['memory_bytes'] // 2**20} MB)"
        try:  # noqa: SIM105 - contextlib is one import more in every run
            message += "\n\n" + _describe(exc)
        except MemoryError:
            pass
        _fail("resource_limit", message)
    except SystemExit as exc:
        _fail("code_error", f"the code called sys.exit({exc.code!r}) instead of returning from main")
    except BaseException as exc:  # noqa: BLE001 - anything the user's code raises is its failure
        _fail("code_error", _describe(exc))

    try:
        text = _dumps(value)
    except CpuLimitExceededError:
        _fail("resource_limit", cpu_message)
    except MemoryError:
        _fail("resource_limit", "the result of main did not fit in the memory limit")
    except (TypeError, ValueError, RecursionError) as exc:
        _fail("code_error", f"main returned a value that is not JSON: {type(exc).__name__}: {exc}")
    _finish(f'{{"ok":true,"usage":{_usage()},"result":'.encode() + text.encode() + b"}")


if __name__ == "__main__":
    main()
