"""Benchmark: the read model's fold alone, on the records of a loaded engine, at row delays.

    python -m bench.read_model [--bootstrap HOST:PORT] [--runs 2000] [--concurrency 32]
                               [--batch 45] [--delays 0,1] [--rounds 3]

Starts an engine (on ``--bootstrap`` or a broker of its own), drives ``--runs`` five-node
diamonds (``bench.diamond``) with ``--concurrency`` callers, and reads the records the views fold
(the events, request and dead-letter topics) back, each run's events ``--concurrency`` requests
after its own, as the live views meet them. Then, for each row delay in
turn, ``--rounds`` times, it folds them into a fresh SQLite store in this process, in batches of
``--batch`` records (about what the live reader hands over at 250 runs/s), and prints the CPU it
took (this process's, SQLite's thread included) per run, and the rows written per run.

The fold alone, replayed, does not move with the broker or the other processes the way an end
to end run does, so row delays compare within a few percent in one sitting (ADR 0063).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import ConsumerRecord

from bench.diamond import DIAMOND, phase
from bench.harness import engine_on
from linkflow_stream.dev.testing import call, read_topic
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.metadata import topic_partitions
from linkflow_stream.replay import view_topics
from projections.read_model import ReadModel, Topics
from projections.store import open_store


async def read_records(bootstrap: str, topics: list[str]) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topics``, in log order per partition."""
    counts = {topic: len(await topic_partitions(bootstrap, topic)) for topic in topics}
    return [r for t in topics for r in await read_topic(bootstrap, t, partitions=counts[t])]


def as_met(
    records: list[ConsumerRecord[bytes, bytes]], requests: frozenset[str], in_flight: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records in the order the live views meet them: a run's start request, then its events
    only after ``in_flight`` later requests (the runs decided meanwhile). A record's timestamp is
    its event's time, the request's at once, so it does not give that order."""
    starts = sorted((r for r in records if r.topic in requests), key=lambda r: (r.timestamp, r.offset))
    events: dict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = {}
    for record in records:
        if record.topic not in requests:
            events.setdefault(record.key, []).append(record)
    ordered: list[ConsumerRecord[bytes, bytes]] = []
    for i, start in enumerate(starts):
        ordered.append(start)
        if i >= in_flight:
            ordered += events.pop(starts[i - in_flight].key, [])
    for rest in events.values():
        ordered += rest
    return ordered


async def fold_all(
    records: list[ConsumerRecord[bytes, bytes]], topics_of: Topics, delay: float, batch: int
) -> tuple[float, int]:
    """Fold ``records`` into a fresh store at row ``delay``: (CPU seconds, rows written)."""
    rows = [0]

    def written(n: int) -> None:
        rows[0] += n

    with tempfile.TemporaryDirectory(prefix="linkflow-bench-views-") as tmp:
        store = open_store(None, Path(tmp))
        await store.open("bench")
        model = ReadModel(store, default_codec(), topics_of, row_delay=delay, on_rows_written=written)
        began = time.process_time()
        for start in range(0, len(records), batch):
            await model.fold(records[start : start + batch])
        await model.write_all()
        took = time.process_time() - began
        await store.close()
    return took, rows[0]


def recorded(
    bootstrap: str | None, runs: int, concurrency: int
) -> tuple[list[ConsumerRecord[bytes, bytes]], Topics]:
    """Drive ``runs`` diamonds with ``concurrency`` callers through an engine (on ``bootstrap``,
    or a broker of its own) and read back what its views fold, in the order they meet it."""
    with engine_on(bootstrap) as engine:
        workflow_id = f"bench-views-{uuid.uuid4().hex[:6]}"
        status, body = call("POST", f"{engine.url}/api/workflows", {"id": workflow_id, **DIAMOND})
        assert status in (200, 201), body
        _seconds, _latencies, failures = asyncio.run(phase(engine.url, workflow_id, runs, concurrency))
        assert failures == 0, f"{failures} runs failed"
        topics_of = view_topics(engine.settings())
        names = [topics_of.events, *sorted(topics_of.requests), topics_of.dlq or ""]
        read = asyncio.run(read_records(engine.bootstrap, [n for n in names if n]))
    return as_met(read, topics_of.requests, concurrency), topics_of


def recording_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``recorded`` and of the folds of what it records."""
    parser.add_argument("--bootstrap", help="a running broker (default: one of its own)")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=45, help="records a fold takes at once")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    recording_options(parser)
    parser.add_argument("--delays", default="0,1", help="row delays to compare, in seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    records, topics_of = recorded(args.bootstrap, args.runs, args.concurrency)
    runs = sum(1 for r in records if r.topic in topics_of.requests)
    print(f"{len(records)} records of {runs} runs, {args.concurrency} in flight, in batches of {args.batch}")
    figures: dict[float, list[tuple[float, int]]] = {d: [] for d in delays}
    for _ in range(args.rounds):
        for delay in delays:  # alternating, so a slower minute weighs on each delay alike
            figures[delay].append(asyncio.run(fold_all(records, topics_of, delay, args.batch)))
    for delay, results in figures.items():
        cpu = [took / runs * 1e6 for took, _rows in results]
        print(
            f"row delay {delay:g} s: {statistics.median(cpu):7.0f} us of CPU a run "
            f"(rounds: {', '.join(f'{c:.0f}' for c in cpu)}), {results[0][1] / runs:.2f} rows a run"
        )


if __name__ == "__main__":
    main()
