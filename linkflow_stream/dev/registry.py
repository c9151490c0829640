"""A real schema registry for development, tests and CI: Apicurio Registry, run from its
application on Maven Central, as the dev broker is run from Kafka's jars (ADR 0025).

``registry_pom.xml`` beside this module names the artifact (the application's Quarkus build as a
tar.gz); Maven fetches it into ``~/.m2`` once and it is unpacked into the cache dir, so no Docker
is needed. The version pinned there runs on Java 17 (ADR 0025 says which versions were tried).
The registry keeps its schemas in memory (its default, an in-memory H2 database) and listens on
127.0.0.1 only; it serves the Confluent-compatible API that ``LINKFLOW_SCHEMA_REGISTRY_URL``
points at, under ``/apis/ccompat/v7``.

Invariants, as for the broker: ready only when the API answers (never because of a log line);
a data dir runs at most one registry, and a start reuses it while it runs; only a process that is
this data dir's registry is ever signalled. A registry in memory forgets every id when it stops,
so records written through it cannot be read after its restart: it is for development and tests.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.dev.broker import command_line, port_is_free, read_pid

POM = Path(__file__).resolve().parent / "registry_pom.xml"
RUN_JARS = ("quarkus-run.jar", "*-runner.jar")
"""The jar to run at the archive's top: Quarkus' fast-jar layout (Apicurio 3) or its legacy-jar one
(Apicurio 2, whose release archive holds ``<artifact>-runner.jar`` beside ``lib/``)."""
CCOMPAT_PATH = "/apis/ccompat/v7"
"""Where Apicurio serves the Confluent-compatible API (what LINKFLOW_SCHEMA_REGISTRY_URL names)."""
MARKER = "-Dlinkflow.registry.data-dir="
"""A system property that names the data dir in the Java command line: how a pid is recognised."""


class RegistryError(LinkflowError):
    """The schema registry could not be fetched or started."""

    error_type = "schema_registry"


class StartOutcome(enum.Enum):
    STARTED = "started"
    REUSED = "reused"


def _quiet(_message: str) -> None:
    """The default progress callback: say nothing."""


def run_jar(app: Path) -> Path | None:
    """The jar that starts the unpacked application ``app``, if it has one."""
    for pattern in RUN_JARS:
        found = sorted(app.glob(pattern))
        if found:
            return found[0]
    return None


def application(cache_dir: Path, progress: Callable[[str], None] = _quiet) -> Path:
    """The unpacked application (the directory holding the jar to run): fetched with Maven and
    unpacked once per pom content, then reused."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    app = cache_dir.resolve() / f"apicurio-registry-{digest}"
    if run_jar(app) is not None:
        return app
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = "Maven (mvn) is required to fetch the schema registry"
        raise RegistryError(msg)
    progress("fetching Apicurio Registry from Maven Central (once) ...")
    download = cache_dir.resolve() / f"apicurio-registry-{digest}.download"
    shutil.rmtree(download, ignore_errors=True)
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={download}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    archives = sorted(download.glob("*.tar.gz")) if download.exists() else []
    if proc.returncode != 0 or len(archives) != 1:
        msg = f"mvn could not fetch the schema registry:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
        raise RegistryError(msg)
    progress(f"unpacking {archives[0].name} ...")
    staging = app.with_name(app.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archives[0]) as archive:
        archive.extractall(staging, filter="data")  # no links or paths out of staging
    if run_jar(staging) is None:
        msg = f"{archives[0].name} has no {' or '.join(RUN_JARS)} at its top"
        raise RegistryError(msg)
    staging.rename(app)
    shutil.rmtree(download, ignore_errors=True)
    return app


@dataclass
class SchemaRegistryServer:
    """One Apicurio Registry process whose files (pid, log) live under ``data_dir``."""

    data_dir: Path
    port: int = 8081
    heap_mb: int = 512
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    @property
    def url(self) -> str:
        """The base URL of the Confluent-compatible API: LINKFLOW_SCHEMA_REGISTRY_URL."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "registry.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "registry.pid"

    @property
    def port_file(self) -> Path:
        return self.data_dir / "registry.port"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.running_pid()

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this data dir's registry."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        return f"{MARKER}{self.data_dir}" in command_line(pid)

    def is_ready(self, timeout: float = 2.0) -> bool:
        """True when the Confluent-compatible API answers a list of subjects."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=timeout) as resp:  # noqa: S310 - our loopback URL
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def start(
        self, cache_dir: Path, timeout: float = 120.0, progress: Callable[[str], None] = _quiet
    ) -> StartOutcome:
        """Reuse this data dir's running registry, or start one and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self.running_pid()
        if running is not None:
            port = int(self.port_file.read_text()) if self.port_file.exists() else None
            if port != self.port:
                msg = (
                    f"the schema registry of {self.data_dir} runs on port {port} (pid {running}); "
                    f"stop it first (linkflow schema-registry stop --data-dir {self.data_dir})"
                )
                raise RegistryError(msg)
            self._wait_ready(timeout)
            return StartOutcome.REUSED
        self.pid_file.unlink(missing_ok=True)
        if not port_is_free(self.port):
            msg = f"port {self.port} is in use by another process; stop it or choose another port"
            raise RegistryError(msg)
        app = application(cache_dir, progress)
        self.launch(app)
        self._wait_ready(timeout)
        return StartOutcome.STARTED

    def launch(self, app: Path) -> None:
        jar = run_jar(app)
        if jar is None:
            msg = f"{app} holds no jar to run"
            raise RegistryError(msg)
        java = shutil.which("java") or "java"
        argv = [
            java,
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",  # one small heap on a shared machine: no parallel GC threads
            "-XX:TieredStopAtLevel=1",  # starts in half the time; a dev registry is never hot
            f"{MARKER}{self.data_dir}",
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.host=127.0.0.1",
            "-Dquarkus.log.console.json=false",
            "-jar",
            str(jar),
        ]
        # Apicurio 2 reads its port from HTTP_PORT in the prod profile; 3 from quarkus.http.port.
        env = {**os.environ, "HTTP_PORT": str(self.port), "QUARKUS_HTTP_HOST": "127.0.0.1"}
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir, env=env
            )
        self.pid_file.write_text(str(self.process.pid))
        self.port_file.write_text(str(self.port))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                msg = f"the schema registry exited with {self.process.returncode}\n{self.log_tail()}"
                raise RegistryError(msg)
            if self.is_ready():
                return
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        msg = f"the schema registry did not answer within {timeout:.0f}s\n{tail}"
        raise RegistryError(msg)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM this data dir's registry, then SIGKILL; False when none was running."""
        if self.process is not None and self.process.poll() is not None:
            self.process = None
        pid = self.pid
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # its own session: the group is the registry alone
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.1)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            self.process = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def _alive(self, pid: int) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self._is_ours(pid)
