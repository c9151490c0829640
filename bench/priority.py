"""Benchmark: does high priority stay fast while a flood of low-priority runs saturates the engine?

    python -m bench.priority [--low 4000] [--high 200] [--high-concurrency 4]
                             [--bootstrap HOST:PORT | --url http://127.0.0.1:8084]

Without ``--url`` it starts an engine of its own, on a broker of its own unless ``--bootstrap``
names one (the engine then uses its own topic prefix there). Nothing else should load the machine
meanwhile. The workflow is the 5-node diamond of ``bench.diamond``, with ``--http`` a diamond whose
middle node is an HTTP call to a local server (a task for the executor, so results travel back
through the results topic).

1. idle: ``--high`` high-priority runs, ``--high-concurrency`` at a time, each ``POST
   /api/executions?wait=`` until the finished run comes back; an empty engine.
2. loaded: ``--low`` low-priority runs are sent without waiting (the flood), then the same high
   runs as in 1 while the low backlog is still there; then every low run is waited for.

It prints high's p50 and p99 in both phases (client side: the POST until the answer; in-engine:
the run's ``created_at`` to ``finished_at``, only meaningful with ``--http``, since inline nodes
are decided at the request's time), the low backlog when the high runs began and ended, low's
throughput while high ran and overall, and the ratio ``high_p99_loaded / high_p99_idle`` (the
target in issue 11 is within 3x). Figures only: no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from bench.diamond import DIAMOND
from bench.harness import engine_on, percentile
from linkflow_stream.core import topic_names
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, read_topic


def http_diamond(target: str) -> dict[str, Any]:
    nodes = [dict(n) for n in DIAMOND["nodes"]]
    nodes[2] = {"id": "c", "type": "http", "depends_on": ["a"], "config": {"url": f"{target}/echo"}}
    nodes[4] = {**nodes[4], "config": {"expression": "nodes.b + nodes.d + nodes.a.n + 1"}}
    return {"nodes": nodes}


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    """Client side: the POST until the finished run came back."""
    created: dict[str, float] = field(default_factory=dict)
    """Each run's ``created_at`` (epoch seconds): when its request was accepted."""
    sent: list[float] = field(default_factory=list)
    """When each latency's run was sent, in seconds from ``began``."""
    failures: int = 0
    began: float = 0.0
    ended: float = 0.0


async def run_high(
    session: aiohttp.ClientSession, url: str, workflow_id: str, n: int, concurrency: int
) -> Phase:
    """``n`` high runs with ``?wait``, ``concurrency`` at a time."""
    phase = Phase(began=time.time())
    todo = list(range(n))

    async def worker() -> None:
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            async with session.post(
                f"{url}/api/executions?wait=120",
                json={"workflow_id": workflow_id, "input_data": {"n": i}},
                headers={"X-Priority": "high"},
            ) as resp:
                body = await resp.json()
            phase.latencies.append(time.perf_counter() - t0)
            phase.sent.append(time.time() - (time.perf_counter() - t0) - phase.began)
            if resp.status != 200 or body.get("status") != "success":
                phase.failures += 1
                continue
            phase.created[body["id"]] = datetime.fromisoformat(body["created_at"]).timestamp()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.ended = time.time()
    return phase


async def flood_low(session: aiohttp.ClientSession, url: str, workflow_id: str, n: int) -> list[str]:
    """``n`` low runs sent without waiting; returns their ids."""
    ids: list[str] = []
    todo = list(range(n))

    async def worker() -> None:
        while todo:
            i = todo.pop()
            async with session.post(
                f"{url}/api/executions",
                json={"workflow_id": workflow_id, "input_data": {"n": i}},
                headers={"X-Priority": "low"},
            ) as resp:
                body = await resp.json()
            if resp.status in (200, 202):
                ids.append(body["id"])

    await asyncio.gather(*(worker() for _ in range(32)))
    return ids


async def low_backlog(session: aiohttp.ClientSession, url: str) -> int:
    """Low runs accepted and not started yet, as the engine counts them."""
    async with session.get(f"{url}/api/admin/queue/status") as resp:
        body = await resp.json()
    return int(body["queues"]["low"]["queued"])


async def low_done(session: aiohttp.ClientSession, url: str, sent: int) -> int:
    """Low runs that have ended, as the engine's views count them (sent less queued and running)."""
    async with session.get(f"{url}/api/admin/queue/status") as resp:
        low = (await resp.json())["queues"]["low"]
    return sent - int(low["queued"]) - int(low["running"])


GC, GEN2 = "linkflow_gc_pause_seconds", 'generation="2",'


LOOP_LAG = "linkflow_event_loop_lag_seconds"


async def loop_lag(
    session: aiohttp.ClientSession, url: str, metric: str = LOOP_LAG, labels: str = ""
) -> dict[float, float]:
    """The engine's buckets of a histogram (``labels``: its other labels, as exported) so far:
    upper bound -> count."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[float, float] = {}
    for row in text.splitlines():
        if row.startswith(f"{metric}_bucket{{{labels}"):
            bound = row.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(row.rsplit(" ", 1)[1])
    return out


def lag_line(
    name: str, before: dict[float, float], after: dict[float, float], what: str = "loop lag (10 ms timer"
) -> str:
    """The loop lag of one phase (the buckets' difference): its p99 and worst, as bucket bounds."""
    counts = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return f"{name:<18} {what}): none"

    def bound(q: float) -> str:
        b = next(b for b, n in counts.items() if n >= q * total)
        return "> 2.5 s" if b == float("inf") else f"<= {b * 1000:g} ms"

    worst = next(b for b, n in counts.items() if n >= total)
    worst_text = "> 2.5 s" if worst == float("inf") else f"<= {worst * 1000:g} ms"
    return f"{name:<18} {what}, {total:.0f}): p99 {bound(0.99)}, worst {worst_text}"


async def decided_at(engine: EngineProcess) -> dict[str, float]:
    """When the orchestrator committed each run's last state (its changelog record's timestamp,
    epoch seconds; events carry their run's time instead), before the views and the API saw it."""
    topic = engine.settings().topic(topic_names.STATE)
    out: dict[str, float] = {}
    for r in await read_topic(engine.bootstrap, topic):
        if r.value is not None:  # not the tombstone of a forgotten run
            key = (r.key or b"").decode()
            out[key] = max(out.get(key, 0.0), r.timestamp / 1000)
    return out


def line(name: str, phase: Phase, decided: dict[str, float] | None) -> str:
    inside = ""
    if decided is not None:
        engine = [decided[e] - t for e, t in phase.created.items() if e in decided]
        if engine:
            inside = (
                f"   in-engine (accepted -> last state) p50 {percentile(engine, 0.5) * 1000:7.1f} ms"
                f"  p99 {percentile(engine, 0.99) * 1000:7.1f} ms"
            )
    return (
        f"{name:<18} n={len(phase.latencies):<5} POST?wait"
        f" p50 {percentile(phase.latencies, 0.5) * 1000:7.1f} ms"
        f"  p99 {percentile(phase.latencies, 0.99) * 1000:7.1f} ms  failures {phase.failures}{inside}"
    )


async def bench(url: str, args: argparse.Namespace, target: str | None, engine: EngineProcess | None) -> None:
    workflow_id = f"bench-priority-{uuid.uuid4().hex[:6]}"
    body = {"id": workflow_id, **(http_diamond(target) if target else DIAMOND)}
    status, answer = call("POST", f"{url}/api/workflows", body)
    if status != 201:
        raise SystemExit(f"could not register the workflow: {status} {answer}")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await run_high(session, url, workflow_id, 50, args.high_concurrency)  # warm-up
        lag_idle = await loop_lag(session, url)
        idle = await run_high(session, url, workflow_id, args.high, args.high_concurrency)
        lag_flood = await loop_lag(session, url)
        gc_flood = await loop_lag(session, url, GC, GEN2)
        t0 = time.time()
        low_ids = await flood_low(session, url, workflow_id, args.low)
        sent = time.time() - t0
        done_before = await low_done(session, url, len(low_ids))
        lag_high = await loop_lag(session, url)
        loaded = await run_high(session, url, workflow_id, args.high, args.high_concurrency)
        lag_end = await loop_lag(session, url)
        gc_end = await loop_lag(session, url, GC, GEN2)
        done_after = await low_done(session, url, len(low_ids))
        deadline = time.monotonic() + args.timeout
        all_done = done_after
        while all_done < len(low_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            all_done = await low_done(session, url, len(low_ids))
        drained = time.time()
    decided = await decided_at(engine) if engine is not None else None
    print(line("high, idle", idle, decided))
    print(line("high, low flood", loaded, decided))
    print(lag_line("high, idle", lag_idle, lag_flood))
    print(lag_line("high, low flood", lag_high, lag_end))
    print(lag_line("flood, then high", gc_flood, gc_end, "full GC passes (generation 2"))
    slowest = sorted(zip(loaded.latencies, loaded.sent, strict=True), reverse=True)[:4]
    print(
        "slowest high runs under the flood: "
        + ", ".join(f"{x * 1000:.0f} ms (sent at +{t:.1f} s)" for x, t in slowest)
    )
    window = loaded.ended - loaded.began
    print(
        f"low flood: {len(low_ids)} accepted in {sent:.1f} s; not yet ended when high began: "
        f"{len(low_ids) - done_before}, when high ended: {len(low_ids) - done_after}"
        + ("" if done_after < len(low_ids) else " (drained: not saturated throughout)")
    )
    low_line = (
        f"low throughput while high ran: {(done_after - done_before) / window:.1f} runs/s (views' count)"
    )
    if decided is not None:
        during = sum(1 for e in low_ids if loaded.began <= decided.get(e, 0) <= loaded.ended)
        low_line += f", {during / window:.1f} runs/s (committed)"
    print(
        f"{low_line}; overall {all_done / (drained - t0):.1f} runs/s;"
        f" {all_done}/{len(low_ids)} low runs ended"
    )
    ratio = percentile(loaded.latencies, 0.99) / percentile(idle.latencies, 0.99)
    print(f"high_p99_loaded / high_p99_idle = {ratio:.2f} (POST?wait; target <= 3)")
    if decided is not None:
        inside = [
            percentile([decided[e] - t for e, t in p.created.items() if e in decided], 0.99)
            for p in (idle, loaded)
        ]
        print(f"high_p99_loaded / high_p99_idle = {inside[1] / inside[0]:.2f} (in-engine)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--low", type=int, default=4000, help="low-priority runs in the flood")
    parser.add_argument("--high", type=int, default=200, help="high-priority runs in each phase")
    parser.add_argument("--high-concurrency", type=int, default=4)
    parser.add_argument("--http", action="store_true", help="the diamond's middle node is an HTTP task")
    parser.add_argument("--weights", help="LINKFLOW_PRIORITY_WEIGHTS for the engine started here")
    parser.add_argument("--timeout", type=float, default=600, help="longest wait for the low runs")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running engine")
    where.add_argument("--bootstrap", help="a running broker to start the engine on")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        target = None
        if args.http:
            server = TargetServer()
            threading.Thread(target=server.serve_forever, daemon=True).start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            target = server.url
        env = {"LINKFLOW_PRIORITY_WEIGHTS": args.weights} if args.weights else {}
        engine = None if args.url else stack.enter_context(engine_on(args.bootstrap, **env))
        asyncio.run(bench(engine.url if engine else args.url, args, target, engine))


if __name__ == "__main__":
    main()
