"""The test suites' and benches' HTTP target takes a wide fan-out's connects at once.

``bench.shapes`` fans a run out to 200 HTTP nodes, four runs at a time, and the target answers
HTTP/1.0: a connection per call. With socketserver's listen backlog of 5 the kernel dropped the
connects it could not queue and the engine's client resent them a second or more later, so the
200-node fan-out measured the target's queue (0.2 runs/s), not the engine.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest

from linkflow_stream.dev.testing import TargetServer


def test_hundreds_of_connects_complete_before_the_server_accepts_any() -> None:
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if cap < 200:
        pytest.skip(f"net.core.somaxconn is {cap}: the kernel caps every backlog below 200 connects")
    server = TargetServer()  # listening, not yet accepting: the kernel alone queues the connects
    sockets: list[socket.socket] = []
    try:
        poller = select.poll()  # not select(): the descriptors may be over 1024 in a long session
        for _ in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.server_address[1]))
            poller.register(s, select.POLLOUT)
        pending = {s.fileno() for s in sockets}
        give_up = time.monotonic() + 5.0  # a dropped SYN is resent after 1 s, then 3, 7, ...
        while pending and time.monotonic() < give_up:
            for fd, _ in poller.poll(100):
                pending.discard(fd)
                poller.unregister(fd)
        assert len(pending) == 0, f"{len(pending)} of 200 connects not completed: the backlog is too short"
        errors = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for s in sockets]
        assert errors == [0] * 200
    finally:
        for s in sockets:
            s.close()
        server.server_close()
