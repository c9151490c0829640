"""Benchmark: does a node cost the same in a 200-node workflow as in a 5-node one?

    python -m bench.shapes [--sizes 5,50,200] [--shapes chain,fanout] [--node-budget 2000]
                           [--concurrency 4] [--bootstrap HOST:PORT]

Starts ``linkflow run`` as a subprocess (on a broker of its own, or on ``--bootstrap`` with a
fresh topic prefix), so its CPU can be read from ``/proc/<pid>/stat``. For each shape and size it
registers a workflow of transform nodes:

- ``chain``: ``n0 -> n1 -> ... -> n(N-1)``, each adding one to the previous output;
- ``fanout``: a root, ``N-2`` branches that depend on it, and a join that depends on them all.

It runs a few warm-up runs, then ``runs = max(--min-runs, --node-budget // N)`` runs, ``--concurrency``
at a time, each ``POST /api/executions?wait=`` (the engine's views show it finished), checks every
output, and waits until the engine's CPU settles (the views fold the last events after the
answer). Figures:

- **cpu us/node**: the engine process's user+system CPU (every thread: the orchestrator, the
  views, the API, the Kafka clients) between just before the first run and the moment it settles,
  less its idle rate over the same time, divided by ``runs x N``. One *node transition* is one
  node of one run going from pending to its end (``node_started`` and ``node_succeeded``).
- **bytes/node**: what the engine wrote to Kafka over the same window, divided by ``runs x N``:
  the sum of key + value + header bytes of every record (aborted ones included) on every topic
  of the engine's prefix, read back between the end offsets before and after. That is the
  payload the brokers store and replicate, before batch framing and compression. Split into the
  event log, the state changelog (``linkflow.state.executions``) and everything else (start
  requests, the read model's changelog if any).
- **ratio**: each size's cpu and bytes per node over the smallest size's of the same shape (the
  target in issue 13: the largest within 1.5x).
- **idle**: the engine's CPU (cores) with nothing to do, measured for 5 s before each window and
  subtracted over it. The engine runs with ``LINKFLOW_ORCHESTRATOR_BATCH_WAIT_SECONDS=0.05``
  (``--engine-env`` changes it): the default since 0a95cf1, pinned here so that figures stay
  comparable whatever the default becomes.

``transform`` nodes run inline: a whole run is one orchestrator step. ``http`` nodes are tasks (a
local echo server in this process answers them): every node's result is a step of its own, which
is where a run's cost used to grow with the square of its size (the whole state re-encoded and
re-written to the changelog at every step, ADR 0039).

The figures are from a shared machine unless you made it quiet; CPU per node is far less noisy
than wall time, but run it twice before believing a 10% difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.harness import cpu_seconds, engine_on
from linkflow_stream.core import topic_names
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call
from linkflow_stream.kafka.consumers import log_ends
from linkflow_stream.kafka.metadata import cluster_metadata


def node(node_type: str, node_id: str, expression: str, depends_on: list[str], target: str) -> dict[str, Any]:
    """A node whose output is ``expression`` (an object ``{'n': ...}`` over ``{input, nodes}``):
    a transform evaluates it inline; an http node posts it to the target's echo route (its input
    mapping computes the body) and maps the echo back (a task: a result, a step of its own)."""
    out: dict[str, Any] = {"id": node_id, "type": node_type}
    if depends_on:
        out["depends_on"] = depends_on
    if node_type == "transform":
        out["config"] = {"expression": expression}
    else:
        out["config"] = {"method": "POST", "url": f"{target}/echo", "json": {}}
        out["input"] = {"json": expression}
        out["output"] = "{'n': output.body.echo.n}"
    return out


def chain(workflow_id: str, size: int, node_type: str, target: str) -> dict[str, Any]:
    nodes = [node(node_type, "n0", "{'n': input.n}", [], target)]
    for i in range(1, size):
        nodes.append(node(node_type, f"n{i}", f"{{'n': nodes.n{i - 1}.n + 1}}", [f"n{i - 1}"], target))
    return {"id": workflow_id, "nodes": nodes}


def fanout(workflow_id: str, size: int, node_type: str, target: str) -> dict[str, Any]:
    branches = [f"b{i}" for i in range(size - 2)]
    nodes = [node(node_type, "root", "{'n': input.n}", [], target)]
    nodes += [node(node_type, b, "{'n': nodes.root.n + 1}", ["root"], target) for b in branches]
    join = f"{{'n': nodes.{branches[0]}.n + nodes.{branches[-1]}.n}}"
    nodes.append(node(node_type, "join", join, branches, target))
    return {"id": workflow_id, "nodes": nodes}


SHAPES = {"chain": chain, "fanout": fanout}
ENGINE_ENV = {"LINKFLOW_ORCHESTRATOR_BATCH_WAIT_SECONDS": "0.05"}
"""At 0.5 ms (the default before 0a95cf1) the orchestrator's fetch loop polled the broker about 1000
times a second and an idle engine used about a third of a core; subtracted over a long window,
that noise drowned the per-node figures. A fetch returns as soon as records arrive, so runs wait
no longer for it."""
NODE_TYPES = ("transform", "http")


def expected(shape: str, size: int, n: int) -> tuple[str, Any]:
    """The sink node and the output it must have for input ``n``."""
    if shape == "chain":
        return f"n{size - 1}", {"n": n + size - 1}
    return "join", {"n": 2 * (n + 1)}


@dataclass
class Result:
    shape: str
    node_type: str
    size: int
    runs: int
    failures: int
    seconds: float
    cpu: float
    bytes_by_kind: dict[str, int]
    idle: float
    """The engine's CPU when idle, cores: subtracted from ``cpu`` over the window."""

    @property
    def transitions(self) -> int:
        return self.runs * self.size

    @property
    def cpu_us_per_node(self) -> float:
        return self.cpu / self.transitions * 1e6

    @property
    def bytes_per_node(self) -> float:
        return sum(self.bytes_by_kind.values()) / self.transitions

    def kind_per_node(self, kind: str) -> float:
        return self.bytes_by_kind.get(kind, 0) / self.transitions


class Topics:
    """The engine's topics and what was written to them between two moments."""

    def __init__(self, engine: EngineProcess) -> None:
        self.engine = engine
        self.prefix = engine.prefix

    def kind(self, topic: str) -> str:
        logical = topic.removeprefix(self.prefix)
        if logical == topic_names.EVENTS:
            return "events"
        if logical == topic_names.STATE:
            return "state"
        return "other"

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.engine.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_uncommitted",  # aborted records were written too
            max_partition_fetch_bytes=64 * 1024 * 1024,
            fetch_max_bytes=128 * 1024 * 1024,
        )
        await consumer.start()
        return consumer

    async def ends(self) -> dict[TopicPartition, int]:
        """The end offset of every partition of the engine's topics (no transaction is open
        when it is read: before the runs, and after the engine settled)."""
        metadata = await cluster_metadata(self.engine.bootstrap)
        topics = [t for t in metadata.topics() if t.startswith(self.prefix)]
        ends = await log_ends(self.engine.bootstrap, topics)
        return {TopicPartition(t, p): offset for (t, p), offset in ends.items()}

    async def written(self, before: dict[TopicPartition, int]) -> dict[str, int]:
        """Key + value + header bytes of the records written since ``before``, by kind."""
        after = await self.ends()
        todo = {tp: (before.get(tp, 0), end) for tp, end in after.items() if end > before.get(tp, 0)}
        out: dict[str, int] = {}
        if not todo:
            return out
        consumer = await self._consumer()
        try:
            consumer.assign(list(todo))
            for tp, (start, _) in todo.items():
                consumer.seek(tp, start)
            deadline = time.monotonic() + 120
            while todo and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    end = todo.get(tp, (0, 0))[1]
                    for r in records:
                        if r.offset >= end:
                            continue
                        size = len(r.key or b"") + len(r.value or b"")
                        size += sum(len(k) + len(v or b"") for k, v in r.headers)
                        kind = self.kind(tp.topic)
                        out[kind] = out.get(kind, 0) + size
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp][1]:
                        del todo[tp]
        finally:
            await consumer.stop()
        return out


SETTLE_METRICS = (
    "linkflow_orchestrator_inputs_total",
    "linkflow_view_records_folded_total",
    "linkflow_node_executions_total",
)
"""Counters that move while the engine still works on what the runs left behind."""


def settle(engine: EngineProcess, quiet_for: float = 1.0, longest: float = 120.0) -> None:
    """Wait until the orchestrator, the executor and the views have had nothing to do for
    ``quiet_for`` (the views fold the last events after a ``?wait`` answer). Judged by the
    engine's counters, not its CPU: on a busy machine a starved engine looks idle."""
    deadline = time.monotonic() + longest
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = tuple(engine.metric_total(m) for m in SETTLE_METRICS)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return
        time.sleep(0.2)


def idle_cpu_rate(pid: int, seconds: float = 5.0) -> float:
    """CPU seconds per second the engine uses with nothing to do (polls, heartbeats, metrics)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def why_failed(status: int, body: Any, sink: str, output: Any) -> str | None:
    """Why a run's answer is not the expected success (``None``: it is): the HTTP status, the
    run's status with its first failed node's error, or the sink's wrong output. A failed run in
    the table says nothing by itself; this says where to look."""
    if status != 200 or not isinstance(body, dict):
        return f"HTTP {status}: {str(body)[:200]}"
    nodes = body.get("nodes") or {}
    if body.get("status") != "success":
        failed = next(((k, v) for k, v in nodes.items() if v.get("error")), None)
        detail = f"; node {failed[0]}: {failed[1]['error']}" if failed else ""
        return f"run {body.get('id')} {body.get('status')}{detail}"[:400]
    got = nodes.get(sink, {}).get("output")
    return None if got == output else f"run {body.get('id')}: {sink} output {got!r}, expected {output!r}"


async def drive(url: str, workflow_id: str, shape: str, size: int, runs: int, concurrency: int) -> list[str]:
    """``runs`` runs, ``concurrency`` at a time; returns why each run that failed or gave a wrong
    output did (``why_failed``)."""
    failures: list[str] = []
    todo = list(range(runs))
    sink_of = {n: expected(shape, size, n) for n in todo}

    async def worker(session: aiohttp.ClientSession) -> None:
        while todo:
            n = todo.pop()
            async with session.post(
                f"{url}/api/executions?wait=300", json={"workflow_id": workflow_id, "input_data": {"n": n}}
            ) as resp:
                body = await resp.json(content_type=None)
            reason = why_failed(resp.status, body, *sink_of[n])
            if reason is not None:
                failures.append(reason)

    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return failures


def measure(
    engine: EngineProcess, shape: str, node_type: str, size: int, target: str, args: argparse.Namespace
) -> Result:
    assert engine.proc is not None
    pid = engine.proc.pid
    workflow_id = f"bench-{shape}-{node_type}-{size}-{uuid.uuid4().hex[:6]}"
    definition = SHAPES[shape](workflow_id, size, node_type, target)
    status, body = call("POST", f"{engine.url}/api/workflows", definition)
    if status != 201:
        raise SystemExit(f"could not register {workflow_id}: {status} {body}")
    runs = max(args.min_runs, args.node_budget // size)
    warm_up = asyncio.run(drive(engine.url, workflow_id, shape, size, max(2, runs // 10), args.concurrency))
    for reason in warm_up:
        print(f"{shape} {node_type} {size}, warm-up run failed: {reason}", flush=True)
    settle(engine)
    idle = idle_cpu_rate(pid)
    topics = Topics(engine)
    before = asyncio.run(topics.ends())
    c0, t0 = cpu_seconds(pid), time.monotonic()
    failures = asyncio.run(drive(engine.url, workflow_id, shape, size, runs, args.concurrency))
    elapsed = time.monotonic() - t0
    for reason in failures:
        print(f"{shape} {node_type} {size}, run failed: {reason}", flush=True)
    settle(engine)
    window = time.monotonic() - t0
    cpu = max(0.0, cpu_seconds(pid) - c0 - idle * window)
    written = asyncio.run(topics.written(before))
    return Result(shape, node_type, size, runs, len(failures), elapsed, cpu, written, idle)


def table(results: list[Result]) -> str:
    header = (
        f"{'shape':<7} {'type':<9} {'nodes':>5} {'runs':>5} {'fail':>4} {'runs/s':>7} {'cpu us/node':>11} "
        f"{'bytes/node':>10} {'events':>7} {'state':>7} {'other':>6} {'cpu x':>6} {'bytes x':>7} {'idle':>5}"
    )
    lines = [header, "-" * len(header)]
    base: dict[tuple[str, str], Result] = {}
    for r in results:
        first = base.setdefault((r.shape, r.node_type), r)
        lines.append(
            f"{r.shape:<7} {r.node_type:<9} {r.size:>5} {r.runs:>5} {r.failures:>4} "
            f"{r.runs / r.seconds:>7.1f} {r.cpu_us_per_node:>11.0f} {r.bytes_per_node:>10.0f} "
            f"{r.kind_per_node('events'):>7.0f} {r.kind_per_node('state'):>7.0f} "
            f"{r.kind_per_node('other'):>6.0f} {r.cpu_us_per_node / max(first.cpu_us_per_node, 1e-9):>6.2f} "
            f"{r.bytes_per_node / max(first.bytes_per_node, 1e-9):>7.2f} {r.idle:>5.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5,50,200", help="node counts, smallest first")
    parser.add_argument("--shapes", default="chain,fanout", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--types", default="transform,http", help=f"node types, of {', '.join(NODE_TYPES)}")
    parser.add_argument(
        "--node-budget", type=int, default=1000, help="node transitions per measurement (runs x nodes)"
    )
    parser.add_argument("--min-runs", type=int, default=4, help="fewest runs per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="runs in flight at once")
    parser.add_argument("--bootstrap", help="a running broker (default: start one here)")
    parser.add_argument(
        "--engine-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a setting of the engine (repeatable); default {' '.join(ENGINE_ENV)}",
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    shapes = args.shapes.split(",")
    types = args.types.split(",")
    if (
        any(s < 3 for s in sizes)
        or any(s not in SHAPES for s in shapes)
        or any(t not in NODE_TYPES for t in types)
    ):
        raise SystemExit(
            f"sizes are at least 3, shapes of {', '.join(SHAPES)}, types of {', '.join(NODE_TYPES)}"
        )
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        server = TargetServer()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        env = ENGINE_ENV | dict(e.split("=", 1) for e in args.engine_env)
        engine = stack.enter_context(engine_on(args.bootstrap, **env))
        for node_type in types:
            for shape in shapes:
                for size in sizes:
                    results.append(measure(engine, shape, node_type, size, server.url, args))
                    print(table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
