"""A real Apache Kafka (KRaft) broker for development, tests and CI: a single node, or one node of
the dev cluster (``cluster.py``, ADR 0017).

The broker's jars come from Maven Central through ``broker_pom.xml`` beside this module (cached
in ``~/.m2``), so no Docker and no tarball download is needed. The same code serves ``linkflow kafka start``,
``linkflow dev``, the pytest session fixture and ``.ci/run``.

Invariants: the broker is ready only when it answers a metadata request that lists itself (never
because of a line in its log, which outlives a restart); a data dir runs at most one broker, and a
start reuses it while it runs; only a process that is this data dir's broker is ever signalled
(a pid file can outlive its process, and the pid can be reused). ADR 0016 says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from linkflow_stream.core.errors import LinkflowError

POM = Path(__file__).resolve().parent / "broker_pom.xml"
MAIN_CLASS = "kafka.Kafka"

# How long the controller keeps a broker's registration alive without a heartbeat (Kafka's default
# is 9 s). A restarted broker comes back with a new incarnation id, and the controller, which
# restarts with it and hands every registration it replays a fresh session, refuses it with
# DUPLICATE_BROKER_REGISTRATION until that session runs out: after a clean stop as after kill -9.
# This single-node dev broker heartbeats to a controller in its own JVM, so a short session is safe.
SESSION_TIMEOUT_MS = 3000
# Where port blocks for a cluster are looked for: above the well-known dev ports (9092, the shared
# test broker's 19092), below the kernel's ephemeral range.
BLOCK_PORTS_FROM = 20000
# How often the broker heartbeats, and how soon it retries a refused registration (default 2 s).
HEARTBEAT_INTERVAL_MS = 500

_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <File name="file" fileName="{log}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


class BrokerError(LinkflowError):
    """The broker could not be fetched, formatted or started."""

    error_type = "broker"


def classpath(cache_dir: Path) -> str:
    """Resolve the broker classpath with Maven once per pom content, then reuse it."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cp_file = cache_dir.resolve() / f"classpath-{digest}.txt"
    if not cp_file.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        mvn = shutil.which("mvn")
        if mvn is None:
            msg = "Maven (mvn) is required to fetch the Kafka broker jars"
            raise BrokerError(msg)
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not cp_file.exists():
            msg = f"mvn could not resolve the Kafka jars:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
            raise BrokerError(msg)
    return cp_file.read_text().strip()


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int, tries: int = 200) -> int:
    """The first of ``count`` consecutive loopback ports, all free now and below the kernel's
    ephemeral range (for a cluster).

    Not from the ephemeral range, as ``free_port`` is: the nodes started first connect to each
    other from ephemeral ports, and one of those could take a port of a node not yet listening."""
    low, _ = _ephemeral_range()
    first_choice, last_choice = BLOCK_PORTS_FROM, max(BLOCK_PORTS_FROM + count, low) - count
    for _ in range(tries):
        first = random.randint(first_choice, last_choice)  # noqa: S311 - a port, not a secret
        if all(port_is_free(first + i) for i in range(count)):
            return first
    msg = f"found no {count} consecutive free ports from {first_choice} in {tries} tries"
    raise BrokerError(msg)


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux; IANA's range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


@dataclass(frozen=True)
class Peers:
    """The cluster a node belongs to: every node's client and controller port, by node id.

    All nodes are combined broker+controller processes and voters of one static quorum (ADR 0017).
    """

    client_ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    cluster_id: str

    @property
    def voters(self) -> str:
        """``controller.quorum.voters``: every node, as ``id@host:port``."""
        return ",".join(f"{i}@127.0.0.1:{port}" for i, port in enumerate(self.controller_ports))

    @property
    def replication_factor(self) -> int:
        """Copies of each internal topic's partitions (offsets, transaction state): three, or
        fewer in a smaller cluster."""
        return min(3, len(self.client_ports))

    @property
    def min_insync_replicas(self) -> int:
        """Copies a write needs before it is acknowledged (``acks=all``): a majority of the
        replicas, so one broker may be lost without losing a write or stopping them."""
        return self.replication_factor // 2 + 1


class StartOutcome(enum.Enum):
    """What ``Broker.start`` did."""

    STARTED = "started"
    """A new broker process was started (storage formatted first if the data dir was new)."""
    REUSED = "reused"
    """This data dir's broker was already running and answering on the port: it was kept."""


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


@dataclass
class Broker:
    """One KRaft broker+controller process whose files all live under ``data_dir``.

    A ``Broker`` made for a data dir whose broker runs already (say, by a second
    ``linkflow kafka start``) finds it through the pid file: ``start`` reuses it and ``stop`` stops it.
    With ``peers`` it is node ``node_id`` of a cluster (``cluster.py`` starts and waits for all
    nodes together); without, a single node that is its own quorum.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 0
    partitions: int = 4
    node_id: int = 1
    peers: Peers | None = None
    heap_mb: int = 1024
    """The JVM's largest heap; a cluster's three nodes on a small machine take less each."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Absolute, so the config path in the broker's command line identifies this data dir.
        self.data_dir = self.data_dir.resolve()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def name(self) -> str:
        """How messages name this broker: by node id when it is one of a cluster."""
        return "Kafka broker" if self.peers is None else f"Kafka broker {self.node_id}"

    @property
    def cluster_ports(self) -> tuple[int, ...]:
        """The client ports of every broker that must answer for this one to be ready."""
        return self.peers.client_ports if self.peers is not None else (self.port,)

    def _write_config(self) -> Path:
        if self.peers is not None:
            self.controller_port = self.peers.controller_ports[self.node_id]
        elif not self.controller_port:
            self.controller_port = free_port()
        logs = self.data_dir / "kraft-logs"
        voters = self.peers.voters if self.peers else f"{self.node_id}@127.0.0.1:{self.controller_port}"
        replicas, min_isr = (
            (self.peers.replication_factor, self.peers.min_insync_replicas) if self.peers else (1, 1)
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            # Topics come from topics/ only: a typo must not silently create a topic.
            "auto.create.topics.enable": "false",
            # The internal topics (group offsets, transaction state) are created on first use with
            # these: in a cluster they must survive a broker's loss as the engine's topics do.
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": "9223372036854775807",
            "num.network.threads": "2",
            "num.io.threads": "4",
            # Fast restarts (see SESSION_TIMEOUT_MS); SIGTERM runs a controlled shutdown (the default).
            "broker.session.timeout.ms": str(SESSION_TIMEOUT_MS),
            "broker.heartbeat.interval.ms": str(HEARTBEAT_INTERVAL_MS),
            "controlled.shutdown.enable": "true",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2.format(log=self.log_file))
        return self.config_file

    def _java(self, cp: str, main: str, *args: str, log: bool) -> list[str]:
        java = shutil.which("java") or "java"
        props = [f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}"] if log else []
        heap = [f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m"]
        return [java, *heap, "-XX:+UseG1GC", *props, "-cp", cp, main, *args]

    @property
    def pid(self) -> int | None:
        """The broker's pid: the process this object started, else the running one from the pid file."""
        return self.process.pid if self.process is not None else self.running_pid()

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this data dir's broker, else None."""
        pid = read_pid(self.pid_file)
        if pid is None or not _is_broker_process(pid, self.config_file):
            return None
        return pid

    def is_ready(self, timeout: float = 5.0) -> bool:
        """True when a broker on this port answers a metadata request that lists it at this address
        (and, in a cluster, every other node at its address).

        A restarted broker refuses clients until the controller has accepted its registration, so
        an answer also means that admin calls (``topics apply``) work."""
        if not _accepts_connections(self.port):  # cheap and quiet: no client errors logged
            return False
        try:
            return asyncio.run(
                asyncio.wait_for(_lists(self.port, self.cluster_ports, int(timeout * 1000)), timeout)
            )
        except (KafkaError, OSError, TimeoutError):
            return False

    def start(
        self, cache_dir: Path, timeout: float = 90.0, progress: Callable[[str], None] = _quiet
    ) -> StartOutcome:
        """Reuse this data dir's running broker, or format storage if new, start one and wait until ready.

        A pid file whose process is gone (or is not this broker) is removed. A port that something
        else holds is a ``BrokerError``, as is a running broker of this data dir on another port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self.running_pid()
        if running is not None:
            if self._reuse(running, timeout, progress):
                return StartOutcome.REUSED
        else:
            self.forget_stale_pid(progress)
        self.check_port()  # before Maven: a port held by another process is the clearer error
        self.launch(classpath(cache_dir))
        self._wait_ready(timeout)
        return StartOutcome.STARTED

    def forget_stale_pid(self, progress: Callable[[str], None] = _quiet) -> None:
        """Remove a pid file whose process is gone or is not this data dir's broker."""
        if self.pid_file.exists() and self.running_pid() is None:
            progress(f"removing a stale pid file (pid {read_pid(self.pid_file)} is not a running broker)")
            self.pid_file.unlink()

    def check_port(self) -> None:
        """Fail clearly, before Java starts, when something else holds the client port (or, in a
        cluster, this node's controller port, which is fixed there)."""
        ports = [self.port] if self.peers is None else [self.port, self.peers.controller_ports[self.node_id]]
        for port in ports:
            if not port_is_free(port):
                msg = (
                    f"port {port} is in use by another process (not the broker of {self.data_dir}); "
                    "stop it or choose another port"
                )
                raise BrokerError(msg)

    @property
    def formatted(self) -> bool:
        """Whether this data dir's storage was formatted already (a restart keeps it)."""
        return (self.data_dir / "kraft-logs" / "meta.properties").exists()

    def launch(self, cp: str) -> None:
        """Write the config, format storage if new, and start the process; do not wait for it.

        A cluster launches every node before it waits: a node cannot answer before a majority of
        the controllers runs."""
        self.check_port()
        cfg = self._write_config()
        if not self.formatted:
            self._format(cp, cfg)
        with (self.data_dir / "broker.stdout").open("ab") as out:  # the child keeps its own copy
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv
                self._java(cp, MAIN_CLASS, str(cfg), log=True),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the engine does not reach it, and a broker that
                # outlives a kill -9 of `make run` is found through the pid file and reused.
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))

    def configured_port(self) -> int | None:
        """The client port the written config gives (that of a running broker, say)."""
        return _configured_port(self.config_file) if self.config_file.exists() else None

    def _reuse(self, pid: int, timeout: float, progress: Callable[[str], None]) -> bool:
        """Keep the running broker if it serves this port; False if it had to be stopped."""
        port = self.configured_port()
        if port != self.port:
            msg = (
                f"the broker of {self.data_dir} is running on port {port} (pid {pid}), not {self.port}; "
                f"stop it first (linkflow kafka stop --data-dir {self.data_dir}) or use port {port}"
            )
            raise BrokerError(msg)
        deadline = time.monotonic() + timeout
        said = False
        while time.monotonic() < deadline and _is_broker_process(pid, self.config_file):
            if self.is_ready(timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
                return True
            if not said:
                progress(f"a broker from an earlier run is up (pid {pid}) but not answering yet: waiting")
                said = True
            time.sleep(0.25)
        if _is_broker_process(pid, self.config_file):
            progress(f"the broker with pid {pid} did not answer within {timeout:.0f}s: stopping it")
            self.stop()
        else:
            progress(f"the broker with pid {pid} exited: starting a new one")
            self.pid_file.unlink(missing_ok=True)
        return False

    def _format(self, cp: str, cfg: Path) -> None:
        # A single node is its own quorum (--standalone); a cluster's nodes share one cluster id
        # and the static voter set of their configs.
        quorum = (
            ["-t", self.peers.cluster_id] if self.peers else ["--standalone", "-t", uuid.uuid4().hex[:22]]
        )
        fmt = subprocess.run(  # noqa: S603 - fixed argv
            self._java(cp, "kafka.tools.StorageTool", "format", *quorum, "-c", str(cfg), log=False),
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            msg = f"Kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}"
            raise BrokerError(msg)

    def check_alive(self) -> None:
        """Raise, with the log tail, if the process this object started has exited."""
        if self.process is not None and self.process.poll() is not None:
            self.pid_file.unlink(missing_ok=True)
            msg = f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}"
            raise BrokerError(msg)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.is_ready(timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        msg = f"Kafka broker not ready after {timeout}s\n{tail}"
        raise BrokerError(msg)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the broker's logs, for a failure message."""
        parts = []
        for f in (self.log_file, self.data_dir / "broker.stdout"):
            if f.exists():
                parts.append(
                    f"--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop this data dir's broker gracefully (SIGTERM: a controlled shutdown), then by force.

        Returns False when no broker of this data dir was running; a stale pid file is removed
        either way, and a process that is not this broker is never signalled."""
        if self.process is not None and self.process.poll() is not None:
            self.process = None  # ours is gone (its pid may be reused): look at the pid file only
        pid = self.pid
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session, so its process group is just the broker
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.1)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if self.process is not None:
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        return True

    def _alive(self, pid: int) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _is_broker_process(pid, self.config_file)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def command_line(pid: int) -> list[str]:
    """A process's argv; empty when it is gone or a zombie."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return [a for a in proc.read_bytes().decode(errors="replace").split("\0") if a]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return []
    ps = subprocess.run(  # noqa: S603 - fixed argv; no /proc (macOS)
        ["ps", "-ww", "-o", "command=", "-p", str(pid)],  # noqa: S607 - ps from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return ps.stdout.split()


def _is_broker_process(pid: int, config_file: Path) -> bool:
    """Whether ``pid`` is alive and is the broker started with ``config_file``."""
    argv = command_line(pid)
    return MAIN_CLASS in argv and str(config_file) in argv


def _configured_port(config_file: Path) -> int | None:
    """The client port in a written ``server.properties``."""
    for line in config_file.read_text().splitlines():
        if line.startswith("listeners="):
            for listener in line.removeprefix("listeners=").split(","):
                if listener.startswith("PLAINTEXT://"):
                    return int(listener.rsplit(":", 1)[1])
    return None


def _accepts_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (as Kafka does, with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _lists(port: int, expected: tuple[int, ...], request_timeout_ms: int) -> bool:
    """One metadata request: does the broker at 127.0.0.1:``port`` list a broker at every
    ``expected`` port (itself, and in a cluster the others)?"""
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    listed = {b["port"] for b in cluster["brokers"] if b["host"] == "127.0.0.1"}
    return set(expected) <= listed
