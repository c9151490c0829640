"""A burst of connections waits for a busy engine; none is dropped for a second's resend.

While the event loop is busy (here: the whole process stopped), the kernel completes the TCP
handshakes and queues them for the server, as many as its listen backlog. A connect beyond
that is dropped and resent a second later, then three: with aiohttp's default backlog of 128,
the 129th caller of a burst waited a second or more for an engine that was busy for
milliseconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from linkflow_stream.dev.testing import EngineProcess

BURST = 600


def connect_all(port: int, n: int, within: float, into: list[socket.socket]) -> int:
    """``n`` connects at once (appended to ``into``); how many were still pending after ``within`` s."""
    poller = select.poll()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        into.append(s)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        poller.register(s, select.POLLOUT)
    pending = {s.fileno() for s in into[-n:]}
    give_up = time.monotonic() + within
    while pending and time.monotonic() < give_up:
        for fd, _ in poller.poll(100):
            pending.discard(fd)
            poller.unregister(fd)
    return len(pending)


def health(s: socket.socket) -> int:
    """The status of ``GET /healthz`` sent on connected socket ``s``."""
    s.setblocking(True)
    s.settimeout(30)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_burst_of_connects_to_a_stopped_engine_is_queued_and_answered(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if cap <= BURST:
        pytest.skip(f"net.core.somaxconn is {cap}: the kernel caps every backlog below this burst")
    engine = engine_factory()
    ports = [engine.port, engine.registry_port]
    sockets: list[socket.socket] = []
    try:
        os.kill(engine.pid, signal.SIGSTOP)  # the loop accepts nothing: only the backlog holds connects
        try:
            pending = {port: connect_all(port, BURST, 5.0, sockets) for port in ports}
        finally:
            os.kill(engine.pid, signal.SIGCONT)
        assert pending == dict.fromkeys(ports, 0), f"connects of {BURST} a port still pending after 5 s"
        statuses = [health(s) for s in sockets]
        assert statuses == [200] * (BURST * len(ports)), json.dumps(sorted(set(statuses)))
    finally:
        for s in sockets:
            s.close()
