"""The test suites' and benches' HTTP target takes a wide fan-out's connects at once.

``bench.shapes`` fans a run out to 200 HTTP nodes, four runs at a time, and the target answers
HTTP/1.0: a connection per call. With socketserver's listen backlog of 5 the kernel dropped the
connects it could not queue and the engine's client resent them a second or more later, so the
200-node fan-out measured the target's queue (0.2 runs/s), not the engine.
"""

from __future__ import annotations

import socket

import pytest

from linkflow_stream.dev.testing import TargetServer, connect_burst, listen_cap


def test_hundreds_of_connects_complete_before_the_server_accepts_any() -> None:
    cap = listen_cap()
    if cap < 200:
        pytest.skip(f"net.core.somaxconn is {cap}: the kernel caps every backlog below 200 connects")
    server = TargetServer()  # listening, not yet accepting: the kernel alone queues the connects
    sockets: list[socket.socket] = []
    try:
        pending = connect_burst([server.server_address[1]], 200, 5.0, sockets)
        assert pending == 0, f"{pending} of 200 connects not completed: the backlog is too short"
        errors = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for s in sockets]
        assert errors == [0] * 200
    finally:
        for s in sockets:
            s.close()
        server.server_close()
