"""How late the event loop runs a timer: the engine's one measure of "something held the loop".

Every part of a process (API, orchestrator, executor, views) shares one event loop, so a CPU-bound
stretch in any of them (a large fold, a long expression, a collector pass) delays every step of
every other, a high-priority run's included. ``linkflow_event_loop_lag_seconds`` shows it, and
``bench.priority`` reads it per phase.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TICK_SECONDS = 0.01
"""The timer's period: 100 wake-ups a second, negligible next to the work it watches."""


async def watch_loop(observe: Callable[[float], None], tick: float = TICK_SECONDS) -> None:
    """Forever: sleep ``tick`` and observe how much later than that the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(tick)
        observe(max(0.0, loop.time() - began - tick))
