"""A broker and an engine of the benchmark's own, so figures never depend on a developer's setup."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from linkflow_stream.dev.broker import Broker, free_port
from linkflow_stream.dev.testing import EngineProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def own_engine(**env: str) -> Iterator[str]:
    """Start a real broker and ``linkflow run`` on free ports; yields the API URL."""
    with own_engine_process(**env) as engine:
        yield engine.url


@contextmanager
def own_engine_process(args: tuple[str, ...] = (), /, **env: str) -> Iterator[EngineProcess]:
    """Start a real broker and ``linkflow run [args]`` on free ports; yields the engine (to
    restart it, read its RSS, ...)."""
    with tempfile.TemporaryDirectory(prefix="linkflow-bench-") as tmp:
        broker = Broker(data_dir=Path(tmp) / "kafka", port=free_port())
        broker.start(cache_dir=Path(".linkflow").resolve())
        engine = EngineProcess(bootstrap=broker.bootstrap, workdir=Path(tmp), extra_env=env, args=args)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
            broker.stop()


@contextmanager
def engine_on(bootstrap: str | None, args: tuple[str, ...] = (), /, **env: str) -> Iterator[EngineProcess]:
    """An engine (``linkflow run [args]``) on ``bootstrap`` with a fresh topic prefix, or on a
    broker of its own."""
    if bootstrap is None:
        with own_engine_process(args, **env) as engine:
            yield engine
        return
    with tempfile.TemporaryDirectory(prefix="linkflow-bench-") as tmp:
        engine = EngineProcess(bootstrap=bootstrap, workdir=Path(tmp), extra_env=env, args=args)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()


@contextmanager
def engines_by_roles(
    bootstrap: str | None, roles: Sequence[tuple[str, ...]]
) -> Iterator[list[EngineProcess]]:
    """One engine split into processes, one per ``roles`` entry (``linkflow run`` arguments, ``()``
    for all roles): the first on ``bootstrap`` (or a broker of its own), the others its siblings,
    with the same topics and consumer group."""
    with engine_on(bootstrap, roles[0]) as first:
        engines = [first]
        try:
            for more in roles[1:]:
                sibling = first.sibling()
                sibling.args = more
                engines.append(sibling)
                sibling.start()
            yield engines
        finally:
            for sibling in engines[1:]:
                sibling.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads), from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
