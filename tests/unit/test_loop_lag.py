"""The loop-lag watch reports a stretch that held the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

from linkflow_stream.runtime import gc_tuning
from linkflow_stream.runtime.loop_lag import watch_loop


async def test_a_task_holding_the_loop_shows_as_lag() -> None:
    seen: list[float] = []
    watch = asyncio.create_task(watch_loop(seen.append, tick=0.005))
    try:
        await asyncio.sleep(0.05)  # a few quiet ticks
        quiet = len(seen)
        time.sleep(0.2)  # noqa: ASYNC251 - on purpose: a stretch that holds the loop
        await asyncio.sleep(0.05)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    assert quiet >= 1, "the watch ticks while the loop is free"
    assert max(seen) >= 0.15, f"the 200 ms stretch was not seen: {max(seen):.3f}"


def test_each_collector_pass_is_observed_with_its_generation_until_stopped() -> None:
    seen: list[tuple[int, float]] = []
    callback = gc_tuning.observe_pauses(lambda generation, seconds: seen.append((generation, seconds)))
    try:
        gc.collect()
        assert (2, seen[-1][1]) == seen[-1] and seen[-1][1] >= 0, f"a full pass was not seen: {seen}"
    finally:
        gc_tuning.stop_observing(callback)
    count = len(seen)
    gc.collect()
    assert len(seen) == count, "still observed after stop_observing"
