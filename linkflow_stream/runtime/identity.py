"""Who this process is, as workers and traces name it."""

from __future__ import annotations

import os
import socket


def instance_id() -> str:
    """``<host>-<pid>``: the worker id in the registry and the trace resource's
    ``service.instance.id``, one value so that a span leads to its worker."""
    return f"{socket.gethostname()}-{os.getpid()}"
