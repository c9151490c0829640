"""The ``code`` node without running code: config validation, the sandbox's command line and env,
and the error where there is no sandbox.

What a sandboxed run does (and what it stops) is in tests/integration/test_code_sandbox.py.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeExecutor, NodeFailure
from linkflow_stream.nodes import build_registry
from linkflow_stream.nodes.code import CodeNode, check_source
from linkflow_stream.nodes.sandbox import (
    OUTPUT_MARKER,
    RUNNER_IN_SANDBOX,
    UNAVAILABLE,
    Limits,
    SandboxUnavailableError,
    _Capture,
    _command,
    _env,
    _payload,
    _signal_of,
    _Tools,
)
from linkflow_stream.settings import Settings

OK_SOURCE = "def main(data):\n    return data['input']\n"
CTX = NodeContext("e1", "wf1", "n1", 1, 5.0)


def config_error(config: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        CodeNode().validate(config)
    return info.value


def test_node_is_a_task_node_named_code() -> None:
    node: NodeExecutor = CodeNode(default_timeout_seconds=12.0)
    assert node.type_name == "code"
    assert node.dispatch is Dispatch.TASK
    assert node.default_timeout_seconds == 12.0


@pytest.mark.parametrize(
    "config",
    [
        {"source": OK_SOURCE},
        {"source": OK_SOURCE, "memory_mb": 32, "cpu_seconds": 1},
        {"source": OK_SOURCE, "memory_mb": 1024, "cpu_seconds": 60},
        {"source": "import json\n\n\ndef helper():\n    pass\n\n\ndef main(data, extra=1):\n    return 1\n"},
        {"source": "def main(*args):\n    return args\n"},
        {"source": "def main(data, /):\n    return data\n"},
        {"source": "def main(data, *, flag=True):\n    return data\n"},
    ],
)
def test_valid_configs_pass(config: dict[str, Any]) -> None:
    CodeNode().validate(config)


def test_a_syntax_error_names_config_source_and_its_line() -> None:
    error = config_error({"source": "def main(data):\n    x = 1\n    return x +\n"})
    assert error.field == "source"
    assert "config.source" in str(error)
    assert "line 3" in error.message


def test_errors_only_the_compiler_finds_are_syntax_errors_too() -> None:
    # ast.parse accepts this; compile() refuses it.
    error = config_error({"source": "return 1\n\ndef main(data):\n    return data\n"})
    assert error.field == "source"
    assert "line 1" in error.message
    assert "'return' outside function" in error.message


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (None, "required"),
        (42, "required"),
        ("", "main(data)"),
        ("def helper(data):\n    return data\n", "main(data)"),
        ("class C:\n    def main(self, data):\n        return data\n", "main(data)"),
        ("if True:\n    def main(data):\n        return data\n", "main(data)"),
        ("main = lambda data: data\n", "main(data)"),
        ("async def main(data):\n    return data\n", "async"),
        ("def main():\n    return 1\n", "one argument"),
        ("def main(data, other):\n    return 1\n", "one argument"),
        ("def main(data, *, key):\n    return 1\n", "one argument"),
        ("x = 1\0\n", "null"),
    ],
)
def test_sources_without_a_callable_main_are_refused(source: Any, words: str) -> None:
    error = config_error({"source": source})
    assert error.field == "source"
    assert words in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_mb", 0),
        ("memory_mb", 31),
        ("memory_mb", 1025),
        ("memory_mb", 256.0),
        ("memory_mb", "256"),
        ("memory_mb", True),
        ("cpu_seconds", 0),
        ("cpu_seconds", 61),
        ("cpu_seconds", 1.5),
        ("cpu_seconds", None),
        ("kill_grace_seconds", -1),
        ("kill_grace_seconds", 61),
        ("kill_grace_seconds", "2"),
        ("kill_grace_seconds", True),
        ("kill_grace_seconds", None),
    ],
)
def test_limits_out_of_range_are_refused(field: str, value: Any) -> None:
    error = config_error({"source": OK_SOURCE, field: value})
    assert error.field == field


@pytest.mark.parametrize("grace", [0, 2, 2.5, 60])
def test_kill_grace_seconds_takes_seconds_from_0_to_60(grace: float) -> None:
    CodeNode(warm_sandboxes=0).validate({"source": OK_SOURCE, "kill_grace_seconds": grace})


def test_a_wrong_kill_grace_says_what_it_takes() -> None:
    error = config_error({"source": OK_SOURCE, "kill_grace_seconds": 90})
    assert error.message == "config.kill_grace_seconds: must be a number of seconds from 0 to 60"


def test_an_unknown_field_is_refused_by_name() -> None:
    error = config_error({"source": OK_SOURCE, "timeout": 3})
    assert error.field == "timeout"
    assert "unknown field" in error.message


def test_check_source_is_usable_on_its_own() -> None:
    check_source(OK_SOURCE)
    with pytest.raises(ConfigError):
        check_source("def main(:\n")


async def test_execute_refuses_bad_config_as_validation_before_starting_anything() -> None:
    node = CodeNode(warm_sandboxes=0)
    with pytest.raises(NodeFailure) as info:
        await node.execute(CTX, {"source": OK_SOURCE, "memory_mb": 4096}, {"input": {}, "nodes": {}})
    assert info.value.error_type == "validation"
    assert "memory_mb" in info.value.message
    with pytest.raises(NodeFailure) as info:
        await node.execute(CTX, {}, {"input": {}, "nodes": {}})
    assert info.value.error_type == "validation"
    assert node.runs == {}


# --- no sandbox, no code ---------------------------------------------------------------------


def test_without_a_sandbox_the_error_is_a_code_error_that_names_the_fix() -> None:
    error = SandboxUnavailableError("no bubblewrap: 'bwrap' is not on PATH (/usr/bin)")
    assert (error.error_type, error.retryable) == ("code_error", False)
    assert error.message == UNAVAILABLE  # the same words as the engine's start-up warning
    assert error.problem.startswith("no bubblewrap")
    assert "apt-get install bubblewrap" in UNAVAILABLE
    assert "--security-opt seccomp=unconfined --security-opt apparmor=unconfined" in UNAVAILABLE
    assert "--security-opt systempaths=unconfined" in UNAVAILABLE
    assert "sysctl kernel.apparmor_restrict_unprivileged_userns=0" in UNAVAILABLE
    assert error.to_error().error_class == "code_error"


def test_the_bwrap_setting_reaches_the_code_node(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().code_bwrap == "bwrap"
    monkeypatch.setenv("LINKFLOW_CODE_BWRAP", "/opt/bubblewrap/bin/bwrap")
    node = build_registry(Settings())["code"]
    assert isinstance(node, CodeNode)
    assert node._pool.bwrap == "/opt/bubblewrap/bin/bwrap"


# --- the sandbox's environment and command line ---------------------------------------------


def test_the_environment_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKFLOW_SECRET_TEST", "s3cr3t")
    monkeypatch.setenv("PYTHONPATH", "/evil")
    env = _env()
    assert set(env) == {"PATH", "LANG", "TMPDIR", "HOME"}
    assert env["TMPDIR"] == env["HOME"] == "/tmp"  # noqa: S108
    assert "s3cr3t" not in repr(env)


def tools(*, root: bool, size: bool = True) -> _Tools:
    return _Tools(
        python="/opt/py/bin/python3.11",
        python_roots=("/opt/py",),
        bwrap="/usr/bin/bwrap",
        bwrap_size=size,
        root=root,
    )


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("root", [True, False])
def test_bwrap_unshares_everything_and_binds_the_system_read_only(root: bool) -> None:
    argv = _command(tools(root=root), Limits(tmp_mb=8), None, 7, 1_600_000_001 if root else None)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--die-with-parent", "--new-session"):
        assert flag in argv
    if root:
        for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"):
            assert flag in argv
        assert argv[argv.index("--cap-drop") + 1] == "ALL"
        assert argv[-2:] == ["--uid", "1600000001"]
    else:
        assert "--unshare-all" in argv
        assert "--uid" not in argv
    assert ("/usr", "/usr") in pairs(argv, "--ro-bind")
    assert ("/opt/py", "/opt/py") in pairs(argv, "--ro-bind")
    assert "--bind" not in argv  # nothing of the host is writable
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert tmpfs == ["/dev/shm", "/tmp"]  # noqa: S108 - the sandbox's private tmpfs
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--size"] == [str(8 * 2**20)] * 2
    remounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--remount-ro"]
    assert remounts == ["/dev", "/"]
    assert argv.index("--remount-ro") > argv.index("--dev")
    assert len(argv) - argv[::-1].index("--remount-ro") > argv.index("/tmp")  # noqa: S108 - / goes ro last
    python = argv.index("/opt/py/bin/python3.11")
    assert argv[python - 1] == "--"
    assert argv[python + 1 : python + 6] == ["-I", "-S", "-B", RUNNER_IN_SANDBOX, "--result-fd"]


def test_bwrap_without_size_binds_the_private_work_dir_instead() -> None:
    argv = _command(tools(root=True, size=False), Limits(), "/tmp/linkflow-code-x", 7, 5)  # noqa: S108
    assert pairs(argv, "--bind") == [("/tmp/linkflow-code-x", "/tmp")]  # noqa: S108
    assert "--tmpfs" not in argv


def test_the_payload_carries_the_limits_in_bytes() -> None:
    payload = _payload("src", {"input": 1}, Limits(memory_mb=64, cpu_seconds=2, file_mb=1))
    assert b'"memory_bytes": 67108864' in payload
    assert b'"cpu_seconds": 2' in payload
    assert b'"file_bytes": 1048576' in payload
    with pytest.raises(ValueError, match="JSON"):
        _payload("src", float("nan"), Limits())


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [(137, signal.SIGKILL), (152, signal.SIGXCPU), (1, None), (0, None), (-9, signal.SIGKILL), (None, None)],
)
def test_signal_of_reads_bwraps_exit_status(returncode: int | None, expected: Any) -> None:
    # bwrap exits 128+N when the runner dies of signal N; bwrap killed itself: -N.
    assert _signal_of(returncode) == expected


async def test_capture_keeps_the_head_and_counts_the_rest() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"a" * 70_000)
    reader.feed_data("é".encode())
    reader.feed_eof()
    capture = _Capture(1000)
    await capture.drain(reader)
    assert capture.total == 70_002
    assert capture.text() == "a" * 1000 + OUTPUT_MARKER
    assert capture.first.is_set()
