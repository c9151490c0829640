"""Benchmark: N executions of a 5-node diamond of transforms, end to end over the HTTP API.

    python -m bench.diamond [--n 2000] [--concurrency 64] [--url http://127.0.0.1:8084]
                            [--engines 2 | --layout 'api,views;orchestrator,executor']
                            [--bootstrap HOST:PORT] [--phases 1,8,32]

Without ``--url`` it starts its own real broker (or uses ``--bootstrap``) and engine processes in
one consumer group: ``--engines`` processes with every role, which share the partitions, or one
process per ``;``-separated group of ``--layout`` (``linkflow run --roles``); callers are spread
over the processes with the api role in turn (nothing else should load the machine meanwhile),
and each phase prints the CPU each process used. Latency is measured the way a
synchronous caller sees it: ``POST /api/executions?wait=`` until the finished execution comes
back. It prints two phases: sequential (one execution at a time: unloaded latency) and
concurrent (throughput); or, with ``--phases``, one per caller count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.harness import cpu_seconds, engines_by_roles, percentile
from linkflow_stream.dev.testing import EngineProcess, call

DIAMOND = {
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expression": "{'n': input.n}"}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a.n * 2"}},
        {"id": "c", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a.n + 1"}},
        {"id": "d", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a.n - 1"}},
        {
            "id": "e",
            "type": "transform",
            "depends_on": ["b", "c", "d"],
            "config": {"expression": "nodes.b + nodes.c + nodes.d"},
        },
    ],
}


async def phase(
    url: str | list[str], workflow_id: str, n: int, concurrency: int
) -> tuple[float, list[float], int]:
    """Run ``n`` executions, ``concurrency`` at a time (caller ``k`` sends to ``urls[k % len]``);
    returns (seconds, latencies, failures)."""
    urls = [url] if isinstance(url, str) else url
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal failures
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            async with session.post(
                f"{url}/api/executions?wait=60", json={"workflow_id": workflow_id, "input_data": {"n": i}}
            ) as resp:
                body = await resp.json()
            latencies.append(time.perf_counter() - t0)
            if resp.status != 200 or body.get("status") != "success" or body["nodes"]["e"]["output"] != 4 * i:
                failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, urls[k % len(urls)]) for k in range(concurrency)))
        return time.perf_counter() - start, latencies, failures


def local_brokers() -> list[int]:
    """Process ids of the Kafka brokers running on this machine (any: the figure is the machine's
    share that went to Kafka, so run nothing else meanwhile)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if b"kafka.Kafka" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def report(name: str, seconds: float, latencies: list[float], failures: int) -> None:
    n = len(latencies)
    print(
        f"{name:<28} n={n:<6} {n / seconds:8.1f} executions/s   "
        f"p50 {percentile(latencies, 0.50) * 1000:7.1f} ms   "
        f"p99 {percentile(latencies, 0.99) * 1000:7.1f} ms   "
        f"mean {statistics.fmean(latencies) * 1000:7.1f} ms   failures {failures}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="executions in the concurrent phase")
    parser.add_argument("--sequential", type=int, default=200, help="executions in the sequential phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--phases", help="instead: one phase per caller count, e.g. 1,8,32 (each --n runs; 1: --sequential)"
    )
    parser.add_argument("--url", help="a running engine; default: start a broker and an engine here")
    parser.add_argument("--engines", type=int, default=1, help="engine processes started here (all roles)")
    parser.add_argument(
        "--layout",
        help="instead: one process per ';'-separated roles group, e.g. 'api,views;orchestrator,executor'",
    )
    parser.add_argument("--bootstrap", help="a running broker for the engines started here")
    args = parser.parse_args()

    def run(urls: list[str], engines: Sequence[EngineProcess] = ()) -> None:
        url = urls[0]
        workflow_id = f"bench-diamond-{uuid.uuid4().hex[:6]}"
        status, body = call("POST", f"{url}/api/workflows", {"id": workflow_id, **DIAMOND})
        if status != 201:
            raise SystemExit(f"could not register the workflow: {status} {body}")
        for other in urls[1:]:  # the registration reaches the others through the log
            deadline = time.monotonic() + 30
            while call("GET", f"{other}/api/workflows/{workflow_id}")[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{other} never saw the workflow")
                time.sleep(0.1)
        asyncio.run(phase(urls, workflow_id, 50, 8))  # warm-up: JIT-free Python still fills caches
        if args.phases:
            for callers in (int(c) for c in args.phases.split(",")):
                n = args.sequential if callers == 1 else args.n
                cpu = [cpu_seconds(e.pid) for e in engines]
                others = {pid: cpu_seconds(pid) for pid in [os.getpid(), *local_brokers()]}
                seconds, latencies, failures = asyncio.run(phase(urls, workflow_id, n, callers))
                report(f"x{callers} ({len(engines) or len(urls)} processes)", seconds, latencies, failures)
                if engines:
                    used = [(cpu_seconds(e.pid) - c) / seconds for e, c in zip(engines, cpu, strict=True)]
                    print(
                        f"{'':<28} engine CPU {sum(used):.2f} cores ("
                        + ", ".join(
                            f"{' '.join(e.args[1:]) or 'all roles'} {u:.2f}"
                            for e, u in zip(engines, used, strict=True)
                        )
                        + f"), {sum(used) / (len(latencies) / seconds) * 1000:.2f} ms a run"
                    )
                rest = {pid: (cpu_seconds(pid) - c) / seconds for pid, c in others.items()}
                client = rest.pop(os.getpid())
                print(
                    f"{'':<28} this client {client:.2f} cores; Kafka brokers on this machine "
                    f"{sum(rest.values()):.2f} cores ({len(rest)} found)"
                )
            return
        report("sequential (latency)", *asyncio.run(phase(urls, workflow_id, args.sequential, 1)))
        report(
            f"concurrent x{args.concurrency}",
            *asyncio.run(phase(urls, workflow_id, args.n, args.concurrency)),
        )

    if args.url:
        run([args.url])
        return
    groups = args.layout.split(";") if args.layout else [None] * args.engines
    roles = [() if g is None else ("--roles", g) for g in groups]
    with engines_by_roles(args.bootstrap, roles) as engines:
        run(
            [e.url for e, r in zip(engines, roles, strict=True) if not r or "api" in r[1].split(",")], engines
        )


if __name__ == "__main__":
    main()
