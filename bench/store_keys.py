"""Benchmark: what the read model's SQLite writes cost as the store fills, by kind of run id.

    python -m bench.store_keys [--bootstrap HOST:PORT] [--runs 2000] [--stored 0,200000]
                               [--rounds 2] [--batch 45]

Starts an engine (on ``--bootstrap`` or a broker of its own), drives ``--runs`` five-node
diamonds (``bench.diamond``) and folds their records as the live views meet them
(``bench.read_model``), keeping every write the fold made: real rows, log lines and batches.
Then, for each size in ``--stored``, it fills a fresh SQLite store with that many runs and writes
the kept batches into it once more, each run under a new id, and prints the CPU (this process's,
SQLite's thread included) and the wall time a run took, for random ids (``uuid4``, what the API
gave before ADR 0073) and time-ordered ones (``core/execution_ids.py``), alternating.

A random id puts each run's row and lines at a random page of the tables' keys: once the keys
are larger than SQLite's page cache (2 MB by default), each write reads those pages back (from
the kernel's cache here) and writes them to the WAL, a page per run per key. A time-ordered id
puts them on the page the last run's went to, which the cache holds and one WAL frame carries
for several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from aiokafka import ConsumerRecord

from bench.read_model import recorded, recording_options
from linkflow_stream.core.clock import now
from linkflow_stream.core.execution_ids import new_execution_id
from linkflow_stream.kafka.codec import default_codec
from projections.read_model import ReadModel, Topics
from projections.store import Changes
from projections.store.sqlite import SqliteStore

IdMaker = Callable[[], str]


class KeepingStore(SqliteStore):
    """A store that keeps a copy of every write it is given."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.kept: list[Changes] = []

    async def write(self, changes: Changes) -> None:
        self.kept.append(
            Changes(
                dict(changes.executions),
                list(changes.lines),
                list(changes.node_network),
                dict(changes.positions),
            )
        )
        await super().write(changes)


def random_ids() -> IdMaker:
    return lambda: f"exec_{uuid.uuid4().hex}"


def ordered_ids(start: datetime) -> IdMaker:
    """Ids a millisecond apart from ``start`` on: a store filled over time."""
    clock = (start + timedelta(milliseconds=n) for n in itertools.count())
    return lambda: new_execution_id(next(clock))


def renamed(batches: list[Changes], make: IdMaker) -> Iterator[Changes]:
    """The batches again, every run under a new id (the same run keeps its new id throughout)."""
    names: dict[str, str] = {}

    def name(run: str) -> str:
        if run not in names:
            names[run] = make()
        return names[run]

    for changes in batches:
        yield Changes(
            {name(run): replace(row, id=name(run)) for run, row in changes.executions.items()},
            [replace(line, execution_id=name(line.execution_id)) for line in changes.lines],
            [replace(node, execution_id=name(node.execution_id)) for node in changes.node_network],
            dict(changes.positions),
        )


async def keep_writes(
    records: list[ConsumerRecord[bytes, bytes]], topics_of: Topics, batch: int
) -> tuple[list[Changes], int]:
    with tempfile.TemporaryDirectory(prefix="linkflow-bench-keys-") as tmp:
        store = KeepingStore(Path(tmp) / "views.sqlite3")
        await store.open("bench")
        model = ReadModel(store, default_codec(), topics_of)
        for start in range(0, len(records), batch):
            await model.fold(records[start : start + batch])
        await model.write_all()
        await store.close()
    return store.kept, len({run for changes in store.kept for run in changes.executions})


async def write_at_size(
    batches: list[Changes], per_pass: int, stored: int, make: IdMaker
) -> tuple[float, float]:
    """Fill a fresh store with ``stored`` runs, then write ``batches`` once more: (CPU, wall)
    seconds a run of that last pass. The CPU is the process's: SQLite's writer thread, and its
    checkpoint thread (which copies what the fill and the pass wrote), are in it."""
    with tempfile.TemporaryDirectory(prefix="linkflow-bench-keys-") as tmp:
        store = SqliteStore(Path(tmp) / "views.sqlite3")
        await store.open("bench")
        for _ in range(stored // per_pass):
            for changes in renamed(batches, make):
                await store.write(changes)
        measured = list(renamed(batches, make))  # rows made before the clock starts: not store work
        began_cpu, began = time.process_time(), time.monotonic()
        for changes in measured:
            await store.write(changes)
        took_cpu, took = time.process_time() - began_cpu, time.monotonic() - began
        await store.close()
    return took_cpu / per_pass, took / per_pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    recording_options(parser)
    parser.add_argument("--stored", default="0,200000", help="runs in the store before the measured pass")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    records, topics_of = recorded(args.bootstrap, args.runs, args.concurrency)
    batches, runs = asyncio.run(keep_writes(records, topics_of, args.batch))
    lines = sum(len(c.lines) for c in batches) / runs
    print(f"{len(batches)} writes of {runs} runs kept; {lines:.1f} lines a run")
    for stored in (int(s) for s in args.stored.split(",")):
        figures: dict[str, list[tuple[float, float]]] = {"random": [], "ordered": []}
        for _ in range(args.rounds):  # alternating, so a slower minute weighs on both alike
            figures["random"].append(asyncio.run(write_at_size(batches, runs, stored, random_ids())))
            figures["ordered"].append(asyncio.run(write_at_size(batches, runs, stored, ordered_ids(now()))))
        for kind, results in figures.items():
            cpus = [c * 1e6 for c, _w in results]
            walls = [w * 1e6 for _c, w in results]
            print(
                f"{stored:>8} stored, {kind:>7} ids: {statistics.median(cpus):5.0f} us of CPU a run "
                f"({', '.join(f'{c:.0f}' for c in cpus)}), {statistics.median(walls):5.0f} us wall"
            )


if __name__ == "__main__":
    main()
