"""A burst of connections waits for a busy engine; none is dropped for a second's resend.

While the event loop is busy (here: the whole process stopped), the kernel completes the TCP
handshakes and queues them for the server, backlog + 1 of them. A connect beyond that is
dropped, and its client sends it again 1 s later (then at 3, 7, 15 s): with aiohttp's default
backlog of 128, the 130th caller of a burst waited a second or more for an engine that was busy
for milliseconds (ADR 0072).
"""

from __future__ import annotations

import resource
import signal
import socket
from collections.abc import Callable

import pytest

from linkflow_stream.dev.testing import EngineProcess, connect_burst, listen_cap

pytestmark = pytest.mark.e2e

BURST = 600
"""Connects to each port: well over aiohttp's default backlog, under the engine's 1024."""


def health(s: socket.socket) -> str:
    """The status line of ``GET /healthz`` sent on connected socket ``s``."""
    s.setblocking(True)
    s.settimeout(30)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_a_burst_of_connects_to_a_stopped_engine_is_queued_and_answered(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    cap = listen_cap()
    if cap < BURST:
        pytest.skip(f"net.core.somaxconn is {cap}: the kernel caps every backlog below this burst")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * BURST + 512  # this process's sockets; the engine accepts as many, besides its own
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"open files are limited to {hard}: {needed} are needed")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # the engine, started next, inherits it
    engine = engine_factory()
    assert engine.proc is not None
    ports = [engine.port, engine.registry_port]
    sockets: list[socket.socket] = []
    try:
        engine.proc.send_signal(signal.SIGSTOP)  # accepts nothing: only the backlog holds connects
        try:
            pending = connect_burst(ports, BURST, 5.0, sockets)
        finally:
            engine.proc.send_signal(signal.SIGCONT)
        assert pending == 0, f"{pending} of {len(sockets)} connects still pending after 5 s"
        errors = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for s in sockets]
        assert errors == [0] * len(sockets), f"connects failed: {sorted(set(errors))}"
        statuses = [health(s) for s in sockets]
        assert statuses == ["HTTP/1.1 200 OK"] * len(sockets), sorted(set(statuses))
    finally:
        for s in sockets:
            s.close()
