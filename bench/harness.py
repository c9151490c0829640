"""A broker and an engine of the benchmark's own, so figures never depend on a developer's setup."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from linkflow_stream.dev.broker import Broker, free_port
from linkflow_stream.dev.testing import EngineProcess


@contextmanager
def own_engine(**env: str) -> Iterator[str]:
    """Start a real broker and ``linkflow run`` on free ports; yields the API URL."""
    with tempfile.TemporaryDirectory(prefix="linkflow-bench-") as tmp:
        broker = Broker(data_dir=Path(tmp) / "kafka", port=free_port())
        broker.start(cache_dir=Path(".linkflow").resolve())
        engine = EngineProcess(bootstrap=broker.bootstrap, workdir=Path(tmp), extra_env=env)
        try:
            engine.start()
            yield engine.url
        finally:
            engine.stop()
            broker.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
