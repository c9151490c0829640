"""Soak: a long run of 5-node diamonds at full speed, then a restart and queries over the history.

    python -m bench.soak [--n 200000] [--concurrency 32] [--every 50000]

Starts its own broker and engine (nothing else should load the machine meanwhile), registers the
diamond of ``bench.diamond`` and keeps ``--concurrency`` callers starting runs with ``?wait=``.
It prints, at every ``--every`` runs, the engine's RSS and the throughput of that stretch; then
the RSS growth over the second half. After the soak it measures:

- restart: SIGTERM, start again, time until ``/readyz`` answers 200 (with the whole history
  stored), against the same on an empty engine measured before the soak;
- the p50 and p99 of ``GET /api/executions?status=success&limit=50`` (sequential, 300 calls),
  and of a page further down through ``next_cursor``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiohttp

from bench.diamond import DIAMOND
from bench.harness import own_engine_process, percentile, rss_mb
from linkflow_stream.dev.testing import EngineProcess, call


async def stretch(url: str, workflow_id: str, first: int, n: int, concurrency: int) -> tuple[float, int]:
    """Run executions ``first .. first+n``; (seconds, failures)."""
    failures = 0
    next_i = first

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal failures, next_i
        while next_i < first + n:
            i = next_i
            next_i += 1
            async with session.post(
                f"{url}/api/executions?wait=60", json={"workflow_id": workflow_id, "input_data": {"n": i}}
            ) as resp:
                body = await resp.json()
            if resp.status != 200 or body.get("status") != "success" or body["nodes"]["e"]["output"] != 4 * i:
                failures += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        return time.perf_counter() - start, failures


def timed_restart(engine: EngineProcess) -> float:
    engine.stop()
    started = time.perf_counter()
    engine.start()
    return time.perf_counter() - started


def query_latencies(url: str, query: str, calls: int = 300) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        status, body = call("GET", f"{url}/api/executions?{query}")
        out.append(time.perf_counter() - t0)
        if status != 200:
            raise SystemExit(f"query {query} failed: {status} {body}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--every", type=int, default=50_000, help="report RSS and throughput every this many runs"
    )
    args = parser.parse_args()
    with own_engine_process() as engine:
        workflow_id = f"soak-{uuid.uuid4().hex[:6]}"
        status, body = call("POST", f"{engine.url}/api/workflows", {"id": workflow_id, **DIAMOND})
        if status != 201:
            raise SystemExit(f"could not register the workflow: {status} {body}")
        empty_restart = timed_restart(engine)
        print(f"restart with an empty history: {empty_restart:.1f} s to /readyz", flush=True)
        assert engine.proc is not None
        rss: dict[int, float] = {0: rss_mb(engine.proc.pid)}
        print(f"{0:>8} runs  RSS {rss[0]:7.1f} MB", flush=True)
        done = 0
        while done < args.n:
            n = min(args.every, args.n - done)
            seconds, failures = asyncio.run(stretch(engine.url, workflow_id, done, n, args.concurrency))
            done += n
            rss[done] = rss_mb(engine.proc.pid)
            print(
                f"{done:>8} runs  RSS {rss[done]:7.1f} MB   {n / seconds:7.1f} runs/s over the last {n}"
                f"   failures {failures}",
                flush=True,
            )
        half = max(k for k in rss if k <= args.n // 2)
        growth = (rss[done] - rss[half]) / rss[half] * 100
        print(f"RSS growth over the second half ({half} -> {done} runs): {growth:+.1f}%")
        history_restart = timed_restart(engine)
        print(
            f"restart with {done} runs stored: {history_restart:.1f} s to /readyz "
            f"({history_restart - empty_restart:+.1f} s against an empty history)"
        )
        first = query_latencies(engine.url, "status=success&limit=50")
        print(
            f"GET /api/executions?status=success&limit=50: p50 {percentile(first, 0.5) * 1000:.1f} ms"
            f"   p99 {percentile(first, 0.99) * 1000:.1f} ms"
        )
        _, page = call("GET", f"{engine.url}/api/executions?status=success&limit=50")
        for _ in range(20):  # 1,000 runs further down
            if page["next_cursor"] is None:
                break
            _, page = call(
                "GET", f"{engine.url}/api/executions?status=success&limit=50&cursor={page['next_cursor']}"
            )
        deep = query_latencies(engine.url, f"status=success&limit=50&cursor={page['next_cursor']}")
        print(
            f"  the same, 1,000 runs down by cursor: p50 {percentile(deep, 0.5) * 1000:.1f} ms"
            f"   p99 {percentile(deep, 0.99) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
