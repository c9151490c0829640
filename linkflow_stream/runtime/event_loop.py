"""Which event loop the engine process runs on (ADR 0062).

An engine's event loop does a pass for every resolved future, socket read and timer: at one
caller a third of the engine's CPU went to the loop itself, at 32 callers a fifth (bench.profile,
docs/performance.md). uvloop runs the same asyncio API on libuv, with the loop's passes, its
socket transports and its timers in C. ``asyncio`` stays selectable (``LINKFLOW_EVENT_LOOP``) to
tell a uvloop problem from ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import uvloop

EventLoopName = Literal["uvloop", "asyncio"]


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` takes for ``name`` (``None``: asyncio's own loop)."""
    if name == "asyncio":
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The running loop's implementation, for the start-up log line."""
    return type(loop).__module__.split(".")[0]
