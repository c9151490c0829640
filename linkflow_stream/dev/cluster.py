"""A dev Kafka cluster on this machine: three combined broker+controller KRaft nodes (ADR 0017).

Node ``i`` keeps its files in ``<data dir>/node-<i>``, serves clients on ``port + i`` and its
controller on ``port + size + i``: ports a reader can predict, and a node restarted alone finds
its peers where they were. All nodes are voters of one static quorum.

Invariants: the cluster is ready only when every node answers a metadata request that lists all
of its brokers (never a log line); a start reuses the nodes of the data dir that run already and
starts the others; like ``Broker``, only processes that are this data dir's nodes are signalled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from linkflow_stream.dev.broker import Broker, BrokerError, Peers, StartOutcome, classpath

SIZE = 3
"""Three nodes: the fewest for replication factor 3 with ``min.insync.replicas`` 2, and a quorum
that outlives one node."""
NODE_HEAP_MB = 384
"""Each node's largest JVM heap: three nodes, an engine and the tests share a small machine."""


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


def node_dir(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}"


@dataclass
class Cluster:
    """``size`` KRaft nodes under ``data_dir``, started and stopped together."""

    data_dir: Path
    port: int = 9092
    size: int = SIZE
    heap_mb: int = NODE_HEAP_MB
    nodes: list[Broker] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        peers = Peers(
            client_ports=tuple(self.port + i for i in range(self.size)),
            controller_ports=tuple(self.port + self.size + i for i in range(self.size)),
            cluster_id=self._cluster_id(),
        )
        self.nodes = [
            Broker(
                data_dir=node_dir(self.data_dir, i),
                port=peers.client_ports[i],
                node_id=i,
                peers=peers,
                heap_mb=self.heap_mb,
            )
            for i in range(self.size)
        ]

    @classmethod
    def found_in(cls, data_dir: Path) -> Cluster | None:
        """The cluster whose node directories ``data_dir`` holds (to stop it), if any."""
        size = len(list(data_dir.glob("node-*")))
        if size == 0:
            return None
        port = Broker(data_dir=node_dir(data_dir, 0)).configured_port() or 0
        return cls(data_dir=data_dir, port=port, size=size)

    def _cluster_id(self) -> str:
        """The id the nodes were formatted with, or a new one: every node must share it."""
        for i in range(self.size):
            meta = node_dir(self.data_dir, i) / "kraft-logs" / "meta.properties"
            if meta.exists():
                for line in meta.read_text().splitlines():
                    if line.startswith("cluster.id="):
                        return line.removeprefix("cluster.id=").strip()
        return uuid.uuid4().hex[:22]

    @property
    def bootstrap(self) -> str:
        """Every node's client address: a client reaches the cluster while any one of them runs."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [pid for node in self.nodes if (pid := node.pid) is not None]

    def node(self, node_id: int) -> Broker:
        return self.nodes[node_id]

    def is_ready(self, timeout: float = 5.0) -> bool:
        """True when every node answers a metadata request listing all the cluster's brokers."""
        return all(node.is_ready(timeout) for node in self.nodes)

    def start(
        self, cache_dir: Path, timeout: float = 180.0, progress: Callable[[str], None] = _quiet
    ) -> StartOutcome:
        """Reuse the nodes that run already, start the others, and wait until the cluster is ready.

        ``REUSED`` when every node ran already. A single broker running from ``data_dir``, a node
        running on another port, or a client or controller port held by another process is a
        ``BrokerError``, raised before any node starts."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        single = Broker(data_dir=self.data_dir)
        if (pid := single.running_pid()) is not None:
            msg = (
                f"a single Kafka broker runs from {self.data_dir} (pid {pid}); "
                f"stop it first (linkflow kafka stop --data-dir {self.data_dir})"
            )
            raise BrokerError(msg)
        missing: list[Broker] = []
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            pid = node.running_pid()
            if pid is None:
                node.forget_stale_pid(progress)
                missing.append(node)
            elif node.configured_port() != node.port:
                msg = (
                    f"node {node.node_id} of {self.data_dir} is running on port {node.configured_port()} "
                    f"(pid {pid}), not {node.port}; stop the cluster first "
                    f"(linkflow kafka stop --data-dir {self.data_dir}) or use its ports"
                )
                raise BrokerError(msg)
        if 0 < len(missing) < self.size:
            running = [n.node_id for n in self.nodes if n not in missing]
            progress(f"nodes {running} from an earlier run are up: keeping them")
        for node in missing:  # every port checked before any node starts
            node.check_port()
        try:
            if missing:
                cp = classpath(cache_dir)
                for node in missing:
                    node.launch(cp)
            self._wait_ready(timeout)
        except BrokerError:  # none of the nodes started here is left running
            self._stop_nodes(missing, timeout=10.0)
            raise
        return StartOutcome.STARTED if missing else StartOutcome.REUSED

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                node.check_alive()
            if self.is_ready(timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
                return
            time.sleep(0.25)
        msg = f"Kafka cluster not ready after {timeout}s\n{self.log_tail()}"
        raise BrokerError(msg)

    def log_tail(self, lines: int = 30) -> str:
        """The end of every node's logs, for a failure message."""
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node (a controlled shutdown each, all at once; then by force). False when
        none was running."""
        return self._stop_nodes(self.nodes, timeout)

    @staticmethod
    def _stop_nodes(nodes: list[Broker], timeout: float) -> bool:
        if not nodes:
            return False
        # At once: a node stopped last alone would wait for a quorum that is gone.
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return any(list(pool.map(lambda node: node.stop(timeout), nodes)))
