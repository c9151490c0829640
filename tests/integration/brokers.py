"""Helpers of the broker tests: clusters to test with, and the broker processes seen from outside
the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkflow_stream.dev.broker import MAIN_CLASS, Broker, BrokerError, free_port_block
from linkflow_stream.dev.cluster import SIZE, Cluster

CACHE = Path(__file__).resolve().parents[2] / ".linkflow"
"""Where the broker's classpath is cached (as ``linkflow kafka start`` caches it)."""


def broker_pids(broker: Broker) -> list[int]:
    """Every live process that is the broker of this data dir, found in /proc (not the pid file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if MAIN_CLASS.encode() in argv and str(broker.config_file).encode() in argv:
                found.append(int(entry.name))
    return found


def start_cluster(data_dir: Path, cache_dir: Path = CACHE) -> Cluster:
    """A three-node cluster on free ports, started as ``linkflow kafka start --brokers 3`` does;
    a start that fails fails the test with every node's log tail (and stops what started)."""
    cluster = Cluster(data_dir=data_dir, port=free_port_block(2 * SIZE))
    try:
        cluster.start(cache_dir=cache_dir)
    except BrokerError as exc:
        pytest.fail(f"Kafka cluster did not start:\n{exc.message}")
    return cluster
