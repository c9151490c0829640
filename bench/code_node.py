"""Benchmark: cold start of the ``code`` node's sandbox against pre-started ("warm") ones.

    python -m bench.code_node [--n 200] [--bwrap PATH] [--interpreter PATH]

Every figure is the latency of one run of a trivial ``main`` (``return data["input"]["n"] + 1``),
one run at a time, on an otherwise idle machine:

* ``cold``: ``run_code`` as with ``CodeNode(warm_sandboxes=0)``: start bwrap and the
  interpreter, send the code, wait for the result, reap the process, remove the temp dir;
* ``warm``: the same on a sandbox started beforehand and already waiting on stdin, measured
  from sending the code to the end of the clean-up (the best a pool can do; each sandbox is
  still used for one run and thrown away);
* ``pool back-to-back``: ``SandboxPool(2)`` as ``CodeNode`` uses it, runs one right after the
  other, so the refill (in the background) competes with them;
* ``pool, 50 ms apart``: the same with 50 ms between runs, as when other nodes run in between;
* ``bare interpreter``: ``python -I -S -c pass`` alone, no sandbox, no protocol: the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from linkflow_stream.nodes.sandbox import (
    BWRAP,
    UNAVAILABLE,
    Limits,
    Sandbox,
    SandboxPool,
    default_interpreter,
    probe,
    run_code,
)

SOURCE = 'def main(data):\n    return data["input"]["n"] + 1\n'


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(f"{name:<22} n={len(ms):<5} p50 {pct(ms, 0.50):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms")


def data(i: int) -> dict[str, object]:
    return {"input": {"n": i}, "nodes": {}}


async def cold(n: int, bwrap: str, python: str) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        run = await run_code(SOURCE, data(i), interpreter=python, bwrap=bwrap)
        times.append(time.perf_counter() - t0)
        assert run.result == i + 1, run
    return times


async def warm(n: int, bwrap: str, python: str) -> list[float]:
    times = []
    for i in range(n):
        sandbox = Sandbox(interpreter=python, bwrap=bwrap)
        try:
            await sandbox.start()
            await sandbox.ready()
            t0 = time.perf_counter()
            run = await sandbox.run(SOURCE, data(i), Limits())
        finally:
            await sandbox.close()
        times.append(time.perf_counter() - t0)
        assert run.result == i + 1, run
    return times


async def pooled(n: int, bwrap: str, python: str, gap: float) -> list[float]:
    pool = SandboxPool(2, interpreter=python, bwrap=bwrap)
    await pool.warm()
    await asyncio.sleep(0.5)
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            run = await pool.run(SOURCE, data(i))
            times.append(time.perf_counter() - t0)
            assert run.result == i + 1, run
            await asyncio.sleep(gap)
    finally:
        await pool.close()
    return times


async def bare(n: int, python: str) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(python, "-I", "-S", "-c", "pass")
        await proc.wait()
        times.append(time.perf_counter() - t0)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bwrap", default=BWRAP, help="the bubblewrap executable (default: bwrap on PATH)")
    parser.add_argument("--interpreter", default=None, help="default: the engine's Python")
    args = parser.parse_args()
    python = args.interpreter or default_interpreter()
    checked = probe(python, args.bwrap)
    if not checked.works:
        sys.exit(f"{UNAVAILABLE}\n(the sandbox probe said: {checked.problem})")
    print(f"bwrap {args.bwrap}, interpreter {python}, {args.n} runs per phase, one at a time")
    await cold(5, args.bwrap, python)  # page cache
    report("cold (run_code)", await cold(args.n, args.bwrap, python))
    report("warm (pre-started)", await warm(args.n, args.bwrap, python))
    report("pool back-to-back", await pooled(args.n, args.bwrap, python, 0.0))
    report("pool, 50 ms apart", await pooled(args.n, args.bwrap, python, 0.05))
    report("bare interpreter", await bare(args.n, python))


if __name__ == "__main__":
    asyncio.run(main())
