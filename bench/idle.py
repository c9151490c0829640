"""Benchmark: what an engine with nothing to do costs, itself and the broker.

    python -m bench.idle [--bootstrap HOST:PORT] [--seconds 15] [--layout 'api,views;orchestrator,executor']

Starts ``linkflow run`` (one all-roles process, or one per ``;``-separated roles group of
``--layout``) on a broker of its own or on ``--bootstrap`` with a fresh topic prefix, lets it
settle for ``--settle`` seconds, then reads for ``--seconds`` the CPU (user + system, from
``/proc``) of each engine process and of every Kafka broker on this machine. An engine runs for
months, mostly waiting: every consumer that polls the broker for nothing costs both sides, all
the time (docs/performance.md, round 3). Nothing else should run on the machine meanwhile; the
broker's figure is the machine's share that went to Kafka, other engines on it included.
"""

from __future__ import annotations

import argparse
import time

from bench.diamond import local_brokers
from bench.harness import cpu_seconds, engines_by_roles


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="a running broker (default: start one here)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to measure")
    parser.add_argument("--settle", type=float, default=10.0, help="how long to wait after the start")
    parser.add_argument("--layout", default="", help="roles groups, one process each (default: all roles)")
    args = parser.parse_args()
    groups = [g for g in args.layout.split(";") if g] or [""]
    roles = [("--roles", g) if g else () for g in groups]
    with engines_by_roles(args.bootstrap, roles) as processes:
        engines = [(group or "all roles", e) for group, e in zip(groups, processes, strict=True)]
        time.sleep(args.settle)
        brokers = local_brokers()
        before = {name: cpu_seconds(e.pid) for name, e in engines}
        broker_before = sum(cpu_seconds(pid) for pid in brokers)
        start = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - start
        for name, engine in engines:
            print(f"engine ({name}): {(cpu_seconds(engine.pid) - before[name]) / elapsed:.3f} cores idle")
        broker = (sum(cpu_seconds(pid) for pid in brokers) - broker_before) / elapsed
        print(f"Kafka brokers on this machine ({len(brokers)} found): {broker:.3f} cores")


if __name__ == "__main__":
    main()
