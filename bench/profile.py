"""Profile: where the engine's CPU goes under the diamond load, as a flame graph and a table.

    python -m bench.profile [--concurrency 32] [--seconds 20] [--rate 200] [--out profile] [--gil]
                            [--bootstrap HOST:PORT | --url URL --pid PID]

Starts ``linkflow run`` as a subprocess (on a broker of its own, or on ``--bootstrap``), or
profiles a running engine (``--url`` with its ``--pid``), drives the 5-node diamond of
``bench.diamond`` with ``--concurrency`` closed-loop ``POST /api/executions?wait=`` callers, and
samples the engine with py-spy (``pip install py-spy``; the dev extras have it) twice while the
load runs: ``OUT.svg``, a flame graph, and ``OUT.txt``, collapsed stacks (py-spy's ``raw``
format), for ``--seconds`` each. py-spy reads the process's memory from outside (ptrace): run it
as root or with ``kernel.yama.ptrace_scope=0``.

The table attributes each sample to a stage by the innermost frame that names one (a pydantic
frame under the Avro codec counts as the codec; under ``evolve``, as the decider), and gives each
stage's share of the samples and its CPU per event: the engine's CPU over the second window
(from ``/proc/<pid>/stat``) times the share, divided by the events the engine committed meanwhile
(runs finished x events per run). Samples are wall-clock samples of threads that were running,
so a stage's share is of the CPU the engine used, not of the machine.

Wall-clock samples count a thread as running while it waits, runnable, for a core: on a machine
whose cores are full, a socket send on loopback often hands the core to the process it wakes
(the broker), and the sender's frame (``StreamWriter.write``, under "event loop") holds the
samples of that wait: 23% of the orchestrator's at 32 callers on this 2-core machine, as many for
a 40-byte ``EndTxn`` as for a produce request. ``--gil`` samples only the thread holding the GIL,
and prints how much of the window it was held: the store's SQLite thread (which runs without the
GIL) is left out, and a process whose GIL is held most of the time is bound by its Python. The
waits above stay in it: uvloop sends without letting the GIL go (21% of the orchestrator's GIL
samples), so the engine's CPU (``/proc``) stays the measure of what it spent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.diamond import DIAMOND
from bench.harness import cpu_seconds, engine_on
from linkflow_stream.dev.testing import call

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JSONata", ("jsonata/", "core/expressions.py", "core/expression_frame.py", "expression_worker")),
    (
        "Avro codec + models",
        (
            "fastavro",
            "kafka/codec",
            "kafka/avro_reader",
            "kafka/avro_writer",
            "kafka/records.py",
            "schema_ids",
        ),
    ),
    ("read model: store", ("projections/store/",)),
    ("read model: fold + render", ("projections/",)),
    ("decider + evolve", ("core/decider.py", "core/state.py", "core/events.py")),
    ("step: inline nodes, tasks", ("runtime/step.py", "nodes/", "core/mapping.py", "core/node_contract")),
    ("orchestrator batch", ("runtime/partition.py", "runtime/orchestrator.py", "runtime/timers.py")),
    ("Kafka client", ("aiokafka/", "kafka/")),
    ("HTTP API", ("aiohttp/", "http/", "multidict", "yarl")),
    ("metrics + traces", ("prometheus_client", "opentelemetry", "runtime/metrics.py", "tracing/")),
    ("event loop", ("asyncio/", "selectors.py", "uvloop")),
)
"""(stage, path fragments): a sample's stage is that of its innermost frame matching a fragment,
stages tried in this order for each frame."""

IDLE = "idle: pool threads waiting"
"""The samples of a pool thread waiting for work: its innermost frame is the pool's ``_worker``
(blocked in its queue's ``get``, C code with no Python frame below). py-spy, sampling without
pausing the engine (``--nonblocking``), takes such a thread for a running one: in the api,views
process of a two-process diamond they were 31% of the samples while the pool threads' own CPU
(``/proc/<pid>/task``) was a few per cent of the process's. They are left out of the shares."""
IDLE_LEAF = re.compile(r"^_worker \([^()]*concurrent/futures/thread\.py(:\d+)?\)$")

FRAME = re.compile(r"\((?P<path>[^()]*?)(?::\d+)?\)$")


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack (``root;...;leaf``, frames ``func (path:line)``)."""
    for frame in reversed(stack.split(";")):
        match = FRAME.search(frame)
        path = match.group("path") if match else frame
        for stage, fragments in STAGES:
            if any(f in path for f in fragments):
                return stage
    return "other"


def stages(raw: str) -> Counter[str]:
    """Samples per stage in py-spy's raw (collapsed) output: one ``stack count`` per line; a
    waiting pool thread's under ``IDLE``."""
    out: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            idle = IDLE_LEAF.match(stack.rsplit(";", 1)[-1])
            out[IDLE if idle else stage_of(stack)] += int(count)
    return out


@dataclass
class Load:
    """Closed-loop diamond callers in a thread of their own, until ``stop``."""

    url: str
    workflow_id: str
    concurrency: int
    done: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    async def _run(self) -> None:
        async def caller(session: aiohttp.ClientSession) -> None:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {"workflow_id": self.workflow_id, "input_data": {"n": i}}
                async with session.post(f"{self.url}/api/executions?wait=60", json=body) as resp:
                    answer = await resp.json()
                if resp.status == 200 and answer.get("status") == "success":
                    self.done += 1
                else:
                    self.failures += 1

        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(caller(session) for _ in range(self.concurrency)))


def seconds_per_event(samples: int, total: int, *, events: int, cpu: float, rate: int | None) -> float:
    """A stage's seconds per event: its share of the process's ``cpu`` seconds, or, for samples
    of the GIL's holder only (``rate``: samples a second), the time they stand for (each one
    1/``rate`` s the GIL was held), which leaves out the threads that ran without the GIL."""
    spent = samples / rate if rate is not None else cpu * samples / max(total, 1)
    return spent / max(events, 1)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (or pip install -e '.[dev]')")
    return found


def py_spy_argv(pid: int, out: Path, fmt: str, seconds: float, rate: int, *, gil: bool) -> list[str]:
    argv = ["record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    return [*argv, "--format", fmt, "--output", str(out), "--nonblocking", *(["--gil"] if gil else [])]


def record(pid: int, out: Path, fmt: str, seconds: float, rate: int, *, gil: bool = False) -> None:
    argv = [py_spy(), *py_spy_argv(pid, out, fmt, seconds, rate, gil=gil)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def events_per_run(url: str, workflow_id: str) -> int:
    """Events one diamond run commits (its last seq), from a run of its own."""
    status, body = call(
        "POST", f"{url}/api/executions?wait=30", {"workflow_id": workflow_id, "input_data": {"n": 1}}
    )
    if status != 200:
        raise SystemExit(f"a diamond run failed: {status} {body}")
    status, metrics = call("GET", f"{url}/api/executions/{body['id']}/metrics")
    return int(metrics["events"])


def profile(url: str, pid: int, args: argparse.Namespace) -> None:
    workflow_id = f"bench-profile-{uuid.uuid4().hex[:6]}"
    status, body = call("POST", f"{url}/api/workflows", {"id": workflow_id, **DIAMOND})
    if status != 201:
        raise SystemExit(f"could not register the workflow: {status} {body}")
    per_run = events_per_run(url, workflow_id)
    load = Load(url, workflow_id, args.concurrency)
    load.start()
    try:
        time.sleep(args.warmup)
        svg, raw = Path(f"{args.out}.svg"), Path(f"{args.out}.txt")
        record(pid, svg, "flamegraph", args.seconds, args.rate, gil=args.gil)
        done0, cpu0, t0 = load.done, cpu_seconds(pid), time.monotonic()
        record(pid, raw, "raw", args.seconds, args.rate, gil=args.gil)
        runs, cpu, wall = load.done - done0, cpu_seconds(pid) - cpu0, time.monotonic() - t0
    finally:
        load.stop()
    counts = stages(raw.read_text())
    idle = counts.pop(IDLE, 0)
    total = sum(counts.values()) or 1
    events = runs * per_run
    print(f"flame graph: {svg}   collapsed stacks: {raw}")
    print(
        f"second window: {wall:.1f} s, {runs} runs ({runs / wall:.1f}/s, {load.failures} failed in all), "
        f"{events} events ({per_run} per run), engine CPU {cpu:.2f} s ({cpu / wall:.2f} cores), "
        f"{cpu / max(events, 1) * 1e6:.0f} us per event"
    )
    gil_rate = args.rate if args.gil else None
    if gil_rate is not None:
        held = total / gil_rate
        print(f"GIL held {held:.2f} s of the window ({held / wall:.2f} of it): the column is time held")
    print(f"{'stage':<28} {'samples':>8} {'share':>6} {'us/event':>9}")
    for stage, n in counts.most_common():
        spent = seconds_per_event(n, total, events=events, cpu=cpu, rate=gil_rate)
        print(f"{stage:<28} {n:>8} {n / total:>6.1%} {spent * 1e6:>9.1f}")
    print(f"{IDLE:<28} {idle:>8}  (not in the shares: see IDLE)")


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    if args.url:
        if args.pid is None:
            raise SystemExit("--url needs --pid, the engine process to sample")
        yield args.url, args.pid
        return
    with engine_on(args.bootstrap) as engine:
        assert engine.proc is not None
        yield engine.url, engine.proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop callers")
    parser.add_argument("--seconds", type=float, default=20, help="length of each recording")
    parser.add_argument("--warmup", type=float, default=5, help="load before the first recording")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default="profile", help="OUT.svg and OUT.txt are written")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (not the store's)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--bootstrap", help="a running broker to start the engine on")
    where.add_argument("--url", help="a running engine (with --pid)")
    parser.add_argument("--pid", type=int, help="the running engine's process id (with --url)")
    args = parser.parse_args()
    with target(args) as (url, pid):
        profile(url, pid, args)


if __name__ == "__main__":
    main()
