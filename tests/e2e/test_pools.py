"""Worker pools on the real broker (ADR 0028): an executor-only process of the ``gpu`` pool next to
an engine of the ``default`` pool, each running only its pool's tasks, never more than its slots,
in priority order, visible in the registry and in the autoscaler's metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import NodeResult
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, read_topic
from linkflow_stream.kafka.codec import default_codec

pytestmark = pytest.mark.e2e

GPU_SLOTS = 2  # topics/topics.toml: [[pool]] name = "gpu", slots = 2
FAST = {"LINKFLOW_HEARTBEAT_SECONDS": "0.5"}


def wid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def main(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """An engine with every role but only the default pool: gpu tasks wait for a gpu worker."""
    e = EngineProcess(
        bootstrap=kafka,
        workdir=tmp_path_factory.mktemp("pools"),
        extra_env=FAST,
        args=("--roles", "api,orchestrator,views,executor", "--pools", "default"),
    )
    e.start()
    yield e
    e.stop()


def gpu_worker(main: EngineProcess) -> EngineProcess:
    """An executor-only process of the gpu pool, on the main engine's topics and app id."""
    worker = main.sibling()
    worker.args = ("--roles", "executor", "--pools", "gpu")
    return worker


def metric(engine: EngineProcess, name: str, pool: str) -> float | None:
    """The sample of ``name{pool=...}`` the engine exports now (``None``: not yet)."""
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{pool="{pool}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def workers(engine: EngineProcess) -> dict[str, dict[str, Any]]:
    status, body = call("GET", f"{engine.registry_url}/api/workers/status")
    assert status == 200, body
    return {w["id"]: w for w in body["workers"]}


def results(engine: EngineProcess, execution_ids: set[str]) -> dict[tuple[str, str], NodeResult]:
    records = asyncio.run(read_topic(engine.bootstrap, f"{engine.prefix}{topic_names.RESULTS}"))
    codec = default_codec()
    out = {}
    for record in records:
        result = codec.decode(record.value, NodeResult)
        if result.execution_id in execution_ids:
            out[(result.execution_id, result.node_id)] = result
    return out


def test_a_node_naming_an_undeclared_pool_is_refused(main: EngineProcess) -> None:
    status, body = call(
        "POST",
        f"{main.url}/api/workflows",
        {
            "id": wid("tpu"),
            "nodes": [{"id": "h", "type": "http", "pool": "tpu", "config": {"url": "https://example.com/"}}],
        },
    )
    assert status == 400, body
    assert body["error"]["type"] == "validation"
    assert "node 'h': pool: no pool 'tpu' (pools: default, gpu)" in body["error"]["message"]


def test_gpu_tasks_wait_for_a_gpu_worker_then_run_there_within_its_slots_high_first(
    main: EngineProcess, target: TargetServer
) -> None:
    key = uuid.uuid4().hex[:8]
    gpu_wf = {
        "id": wid("gpu"),
        "nodes": [
            {
                "id": "g",
                "type": "http",
                "pool": "gpu",
                "config": {"method": "POST", "url": f"{target.url}/concurrent?k={key}&s=1"},
                "input": {"json": "{'i': input.i}"},
            }
        ],
    }
    mixed = {
        "id": wid("mixed"),
        "nodes": [
            {"id": "cpu", "type": "http", "config": {"url": f"{target.url}/cpu-{key}"}},
            {
                "id": "gpu",
                "type": "http",
                "pool": "gpu",
                "depends_on": ["cpu"],
                "config": {"url": f"{target.url}/gpu-{key}"},
            },
        ],
    }
    main.register(gpu_wf)
    main.register(mixed)

    # No gpu worker yet: 10 low runs, then 2 high ones, all dispatched and waiting on the gpu topics.
    lows = [main.start_execution(gpu_wf["id"], {"i": i}, priority="low")[1]["id"] for i in range(10)]
    highs = [main.start_execution(gpu_wf["id"], {"i": 100 + i}, priority="high")[1]["id"] for i in range(2)]
    status, body = main.start_execution(mixed["id"])
    assert status == 202, body
    mixed_id = body["id"]
    waiting = len(lows) + len(highs) + 1
    for execution_id, node in [*((i, "g") for i in [*lows, *highs]), (mixed_id, "gpu")]:
        eventually(
            lambda: main.get(execution_id)["nodes"][node]["status"] == "running",  # noqa: B023 - called at once
            f"{execution_id}/{node} dispatched",
        )
    # The autoscaler's figures. The backlog counts offsets, so the orchestrator's transaction
    # markers count too: at most one per task. No gpu task ran yet: a worker per 2 slots' worth.
    time.sleep(1.5)  # a measurement (every LINKFLOW_HEARTBEAT_SECONDS) taken after the dispatches
    backlog = metric(main, "linkflow_pool_backlog", "gpu")
    assert backlog is not None and waiting <= backlog <= 2 * waiting
    time.sleep(1.5)  # three more measurements: nothing moves meanwhile
    assert metric(main, "linkflow_pool_backlog", "gpu") == backlog
    assert metric(main, "linkflow_pool_desired_workers", "gpu") == -(-backlog // GPU_SLOTS)
    assert main.get(mixed_id)["nodes"]["cpu"]["status"] == "success", "the default pool runs meanwhile"
    assert main.get(mixed_id)["status"] == "running"

    worker = gpu_worker(main)
    worker.start()
    try:
        for execution_id in [*lows, *highs, mixed_id]:
            assert main.wait_status(execution_id, timeout=120)["status"] == "success"
        # Never more than the gpu pool's slots at once, and that many were used.
        assert target.peak[key] == GPU_SLOTS
        # High went first: both high runs were among the first four calls the target saw.
        order = [
            r["body"]["i"] for r in target.hits("/concurrent") if r["body"] in [{"i": i} for i in range(102)]
        ]
        assert {100, 101} <= set(order[:4]), order

        # Each node ran in its pool's process: the results name the worker (host-pid).
        assert main.proc is not None and worker.proc is not None
        done = results(main, {mixed_id, *highs})
        assert done[(mixed_id, "cpu")].worker_id.endswith(f"-{main.proc.pid}")
        assert done[(mixed_id, "gpu")].worker_id.endswith(f"-{worker.proc.pid}")
        assert all(done[(h, "g")].worker_id.endswith(f"-{worker.proc.pid}") for h in highs)

        # The registry shows both, with their roles, pools and slots, up.
        seen = workers(main)
        gpu_id = next(i for i in seen if i.endswith(f"-{worker.proc.pid}"))
        main_id = next(i for i in seen if i.endswith(f"-{main.proc.pid}"))
        assert seen[gpu_id]["roles"] == ["executor"] and seen[gpu_id]["health"] == "up"
        assert list(seen[gpu_id]["pools"]) == ["gpu"] and seen[gpu_id]["pools"]["gpu"]["slots"] == GPU_SLOTS
        assert seen[main_id]["roles"] == ["api", "orchestrator", "executor", "views"]
        assert list(seen[main_id]["pools"]) == ["default"]
        eventually(lambda: metric(main, "linkflow_pool_backlog", "gpu") == 0, "the gpu backlog drains")

        # A killed worker shows down within three of its heartbeats (0.5 s here).
        worker.kill()
        eventually(lambda: workers(main)[gpu_id]["health"] == "down", "the killed gpu worker shows down")
        assert workers(main)[main_id]["health"] == "up"
    finally:
        worker.stop(check_gaps=False)
