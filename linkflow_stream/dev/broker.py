"""A real single-node Apache Kafka (KRaft) broker for development, tests and CI.

The broker's jars come from Maven Central through ``broker_pom.xml`` beside this module (cached
in ``~/.m2``), so no Docker and no tarball download is needed. The same code serves ``linkflow kafka start``,
the pytest session fixture and ``.ci/run``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from linkflow_stream.core.errors import LinkflowError

POM = Path(__file__).resolve().parent / "broker_pom.xml"

_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
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


@dataclass
class Broker:
    """One KRaft broker+controller process whose files all live under ``data_dir``."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 0
    partitions: int = 4
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def _write_config(self) -> Path:
        if not self.controller_port:
            self.controller_port = free_port()
        logs = self.data_dir / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            # Topics come from topics/ only: a typo must not silently create a topic.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": "9223372036854775807",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        cfg = self.data_dir / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2.format(log=self.log_file))
        return cfg

    def _java(self, cp: str, main: str, *args: str, log: bool) -> list[str]:
        java = shutil.which("java") or "java"
        props = [f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}"] if log else []
        return [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", *props, "-cp", cp, main, *args]

    def start(self, cache_dir: Path, timeout: float = 90.0) -> None:
        """Format storage if new, start the broker and wait until it accepts clients."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cp = classpath(cache_dir)
        cfg = self._write_config()
        if not (self.data_dir / "kraft-logs" / "meta.properties").exists():
            fmt = subprocess.run(  # noqa: S603 - fixed argv
                self._java(
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    str(uuid.uuid4().hex[:22]),
                    "-c",
                    str(cfg),
                    log=False,
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                msg = f"Kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}"
                raise BrokerError(msg)
        with (self.data_dir / "broker.stdout").open("ab") as out:  # the child keeps its own copy
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv
                self._java(cp, "kafka.Kafka", str(cfg), log=True),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                msg = f"Kafka broker exited with {self.process.returncode}\n{self.log_tail()}"
                raise BrokerError(msg)
            if self.log_file.exists() and "Kafka Server started" in self.log_file.read_text(errors="replace"):
                return
            time.sleep(0.2)
        self.stop()
        msg = f"Kafka broker not ready after {timeout}s\n{self.log_tail()}"
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

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully, then by force."""
        pid = self.process.pid if self.process else _read_pid(self.pid_file)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, self.process):
            time.sleep(0.1)
        if _alive(pid, self.process):
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
