"""Testing helpers that ship with the engine: the engine as a real subprocess, a broker for a
session, a JSON HTTP client, a local HTTP target server, and a reader of the event log.

The test suite and ``bench/`` use them; so can users testing their own workflows."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from aiokafka import ConsumerRecord, TopicPartition

from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.dev.broker import free_port
from linkflow_stream.kafka.codec import Codec, default_codec
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.partitioning import partition_for
from linkflow_stream.kafka.topics import apply_topics, execution_partitions
from linkflow_stream.runtime.positions import POSITIONS_KEY
from linkflow_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PORT_TRIES = 3
PR_SET_PDEATHSIG = 1
"""``prctl``'s option: the signal the kernel sends a process when the thread that forked it ends."""


def _prctl() -> Any:
    """libc's ``prctl``, looked up here in the parent: a lookup (``dlopen``) in the child between
    fork and exec could wait for a loader lock another thread held at the fork."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


PRCTL = _prctl() if sys.platform == "linux" else None


def dies_with_parent(parent: int) -> None:
    """Run in the child between fork and exec (``preexec_fn``): SIGTERM when ``parent`` ends, by
    any means. A test or benchmark killed (SIGKILL, a CI timeout) left its engines running, which
    loaded the machine and spoiled every figure measured after them (session 15). The signal is
    tied to the forking thread, so only a main-thread start asks for it (``EngineProcess.start``);
    a parent gone before the call is caught by ``getppid``. Linux only; elsewhere nothing."""
    if PRCTL is None or PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One HTTP request; returns (status, decoded JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            return err.code, json.loads(payload)
        except ValueError:
            return err.code, payload.decode(errors="replace")


@dataclass
class EngineProcess:
    """``linkflow run`` in a subprocess, with its own topic prefix and consumer group."""

    bootstrap: str
    workdir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    registry_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    """This instance's own files (data dir, log) keep this name across restarts and port changes."""
    api_key: str | None = None
    """Sent as ``Authorization: Bearer`` by the API helpers below (an engine with auth on)."""
    args: tuple[str, ...] = ()
    """More arguments of ``linkflow run``, e.g. ``("--roles", "executor", "--pools", "gpu")``."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running process's id."""
        if self.proc is None:
            raise RuntimeError("the engine has not started")
        return self.proc.pid

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"engine-{self.prefix}{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"{self.prefix}{self.name}"

    def settings(self) -> Settings:
        """The settings the engine process runs with, as far as naming goes (topics, groups)."""
        return Settings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix, app_id=self.app_id)

    @property
    def app_id(self) -> str:
        return f"lf-{self.prefix.rstrip('.')}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINKFLOW_")}
        env.update(
            {
                "LINKFLOW_BOOTSTRAP_SERVERS": self.bootstrap,
                "LINKFLOW_TOPIC_PREFIX": self.prefix,
                "LINKFLOW_APP_ID": self.app_id,
                "LINKFLOW_API_PORT": str(self.port),
                "LINKFLOW_API_HOST": "127.0.0.1",
                "LINKFLOW_REGISTRY_PORT": str(self.registry_port),
                "LINKFLOW_DATA_DIR": str(self.data_dir),
                "LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS": "true",
                "LINKFLOW_SESSION_TIMEOUT_SECONDS": "6",
                "LINKFLOW_LEASE_GRACE_SECONDS": "2",
                **self.extra_env,
            }
        )
        return env

    def sibling(self) -> EngineProcess:
        """Another instance of the same engine: same topics and consumer group, own port and files."""
        return EngineProcess(
            bootstrap=self.bootstrap,
            workdir=self.workdir,
            prefix=self.prefix,
            extra_env=dict(self.extra_env),
            starts=1,
            api_key=self.api_key,
            args=self.args,
        )

    def start(self, timeout: float = 90, *, port_tries: int = PORT_TRIES) -> None:
        if self.starts == 0:
            asyncio.run(apply_topics(self.settings()))
        self.starts += 1
        parent = os.getpid()
        tied = threading.current_thread() is threading.main_thread() and PRCTL is not None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "linkflow_stream.cli", "run", *self.args],
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: dies_with_parent(parent)) if tied else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail and port_tries > 1:
                    # free_port() only says a port was free a moment ago; another process (a
                    # client's ephemeral port) can take it first. Pick new ports and start again.
                    self.port, self.registry_port = free_port(), free_port()
                    self.start(timeout, port_tries=port_tries - 1)
                    return
                raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{tail}")
            try:
                status, _ = call("GET", f"{self.url}/readyz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"engine not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9: no shutdown, no commit, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def metric_total(self, name: str) -> float:
        """The sum of every sample of metric ``name`` this engine exports now."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def stop(self, *, check_gaps: bool = True) -> None:
        """SIGTERM, after checking that the orchestrator never skipped an input offset."""
        if self.proc is not None and self.proc.poll() is None:
            gaps = self.metric_total("linkflow_input_offset_gaps_total") if check_gaps else 0.0
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
            assert gaps == 0, f"the orchestrator skipped {gaps} input offsets:\n{self.log_tail()}"

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- API helpers ------------------------------------------------------------------------
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def keys_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``linkflow keys ARGS`` against this engine's topics."""
        return subprocess.run(
            [sys.executable, "-m", "linkflow_stream.cli", "keys", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def create_key(self, team: str, role: str) -> str:
        """A new key made with the CLI (the topics must exist: after a first ``start``)."""
        done = self.keys_cli("create", "--team", team, "--role", role)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def register(self, workflow: dict[str, Any]) -> dict[str, Any]:
        """Register ``workflow``: a new version (201), or the latest one if it is the same (200)."""
        status, body = call("POST", f"{self.url}/api/workflows", workflow, self.auth())
        assert status == 201 or (status == 200 and body.get("unchanged") is True), body
        return dict(body)

    def start_execution(
        self,
        workflow_id: str,
        input_data: Any = None,
        *,
        priority: str | None = None,
        wait: float | None = None,
    ) -> tuple[int, Any]:
        headers = {"X-Priority": priority, **self.auth()} if priority else self.auth()
        query = f"?wait={wait}" if wait is not None else ""
        return call(
            "POST",
            f"{self.url}/api/executions{query}",
            {"workflow_id": workflow_id, "input_data": input_data or {}},
            headers,
            timeout=(wait or 0) + 30,
        )

    def get(self, execution_id: str) -> dict[str, Any]:
        status, body = call("GET", f"{self.url}/api/executions/{execution_id}", headers=self.auth())
        assert status == 200, body
        return dict(body)

    def queue_status(self, *, settle_seconds: float = 5.0) -> dict[str, Any]:
        """``GET /api/admin/queue/status`` once its ``consumer_lag`` reads 0, or as it is after
        ``settle_seconds``: the orchestrator group's offsets, which the lag is read from, follow
        the committed positions a moment later (ADR 0061)."""
        deadline = time.monotonic() + settle_seconds
        while True:
            status, body = call("GET", f"{self.url}/api/admin/queue/status", headers=self.auth())
            assert status == 200, body
            if body["consumer_lag"] == 0 or time.monotonic() >= deadline:
                return dict(body)
            time.sleep(0.1)

    def wait_status(
        self,
        execution_id: str,
        statuses: tuple[str, ...] = ("success", "failed", "cancelled"),
        timeout: float = 60,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = call("GET", f"{self.url}/api/executions/{execution_id}", headers=self.auth())
            if status == 200 and body["status"] in statuses:
                return dict(body)
            time.sleep(0.1)
        raise AssertionError(f"{execution_id} not in {statuses} after {timeout}s: {body}\n{self.log_tail()}")


def partition_of(execution_id: str) -> int:
    """The partition number an execution lives on (requests, events, state and all)."""
    return partition_for(execution_id.encode(), execution_partitions())


async def read_topic(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed", partitions: int | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` as a reader with ``isolation_level`` sees it, in partition
    order; ``partitions``: its partition count, if it is not co-partitioned (a one-partition
    topic such as the workers' or the gate's changelog)."""
    consumer = committed_reader(bootstrap, isolation_level=isolation_level)
    await consumer.start()
    try:
        await consumer.topics()
        count = execution_partitions() if partitions is None else partitions
        parts = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def read_events(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed", codec: Codec | None = None
) -> list[ExecutionEvent]:
    """Every event on ``topic`` as a reader with ``isolation_level`` sees it, duplicates
    included, in partition order. ``codec``: one with the schema registry the engine wrote through."""
    codec = codec or default_codec()
    records = await read_topic(bootstrap, topic, isolation_level=isolation_level)
    await codec.learn([r.value for r in records])
    return [codec.decode(r.value, ExecutionEvent) for r in records]


async def read_changelog_tail(
    bootstrap: str, topic: str, codec: Codec | None = None
) -> dict[str, ExecutionState | None]:
    """The last committed value per key of the orchestrator's state changelog (``None``: a
    tombstone), its input positions record (ADR 0061) left out."""
    codec = codec or default_codec()
    latest = {
        (r.key or b"").decode(): r.value for r in await read_topic(bootstrap, topic) if r.key != POSITIONS_KEY
    }
    await codec.learn(latest.values())
    return {k: codec.decode(v, ExecutionState) if v is not None else None for k, v in latest.items()}


def listen_cap() -> int:
    """The kernel's cap on every listen backlog (``net.core.somaxconn``): a burst test of more
    connects than this cannot tell a short backlog from the kernel's limit."""
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def connect_burst(ports: Sequence[int], each: int, within: float, into: list[socket.socket]) -> int:
    """``each`` non-blocking connects to every one of ``ports`` on loopback at once (their sockets
    appended to ``into``, for the caller to use and close); how many had neither completed nor
    failed after ``within`` s (``SO_ERROR`` says which failed). A connect the listen queue has no
    room for is dropped and resent 1 s later, then at 3, 7, 15 s: what a short backlog looks
    like. Polled, not selected: in a long test session the descriptors may be over 1024."""
    poller = select.poll()
    burst: list[socket.socket] = []
    for port in ports:
        for _ in range(each):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            into.append(s)
            burst.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            poller.register(s, select.POLLOUT)
    pending = {s.fileno() for s in burst}
    give_up = time.monotonic() + within
    while pending and time.monotonic() < give_up:
        for fd, _ in poller.poll(100):
            pending.discard(fd)
            poller.unregister(fd)
    return len(pending)


class _Handler(BaseHTTPRequestHandler):
    server: TargetServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_raw(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.server.record(self.command, url.path, dict(self.headers), body)
        if url.path == "/big":
            self._send_raw(200, b"x" * int(q.get("n", "1000")), "text/plain")
        elif url.path == "/binary":
            self._send_raw(200, bytes(range(256)), "application/octet-stream")
        elif url.path == "/json-text":  # ``text`` as is, labelled JSON (whether or not it is)
            self._send_raw(200, q["text"].encode(), "application/json")
        elif url.path.startswith("/status/"):
            self._reply(int(url.path.rsplit("/", 1)[1]), {"status": "as asked"})
        elif url.path == "/slow":
            time.sleep(float(q.get("s", "1")))
            self._reply(200, {"slept": float(q.get("s", "1"))})
        elif url.path == "/concurrent":
            # Counts the calls of key ``k`` in flight at once (``TargetServer.peak``) while each
            # sleeps ``s`` seconds: what a bound on concurrent calls is checked against.
            key = q.get("k", "")
            self.server.enter(key)
            try:
                time.sleep(float(q.get("s", "1")))
            finally:
                self.server.leave(key)
            self._reply(200, {"key": key, "echo": body})
        elif url.path.startswith("/flaky/"):
            # 503 for the first ``fail`` calls of each execution (told by its Idempotency-Key)
            execution = self.headers.get("Idempotency-Key", "").split("/")[0]
            calls = self.server.count(f"{url.path}#{execution}")
            if calls <= int(q.get("fail", "1")):
                self._reply(503, {"call": calls})
            else:
                self._reply(200, {"call": calls, "echo": body})
        elif url.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", q["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._reply(200, {"path": url.path, "query": q, "echo": body})


class TargetServer(ThreadingHTTPServer):
    """A real local HTTP server that HTTP nodes call; it records every request."""

    daemon_threads = True
    request_queue_size = 1024
    """The listen backlog (socketserver's default is 5). A fan-out of 200 HTTP nodes connects
    hundreds of times at once, and the handler speaks HTTP/1.0, a connection per request: with
    a backlog of 5 the kernel dropped most of those connects and the client resent them a second
    or more later, so a wide run measured this server's queue, not the engine."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        """Per key of ``/concurrent?k=``, the most calls that were in flight at once."""
        self._lock = threading.Lock()

    def enter(self, key: str) -> None:
        with self._lock:
            self.in_flight[key] = self.in_flight.get(key, 0) + 1
            self.peak[key] = max(self.peak.get(key, 0), self.in_flight[key])

    def leave(self, key: str) -> None:
        with self._lock:
            self.in_flight[key] -= 1

    def count(self, key: str) -> int:
        """How often ``key`` was counted, this call included."""
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.counts[key]

    def record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append(
                {"method": method, "path": path, "headers": headers, "body": body, "at": time.monotonic()}
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]


def serve() -> Generator[TargetServer, None, None]:
    server = TargetServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
