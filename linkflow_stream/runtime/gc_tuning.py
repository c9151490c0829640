"""Garbage-collector settings for a long-running event loop.

Collections run less often than CPython's default (most garbage is freed by reference counting;
the cyclic collector's passes paused the loop for up to 230 ms when the views held every run).
What the engine holds at start-up is frozen once (``gc.freeze()``), so full passes do not rescan
it.

Survivors are no longer frozen periodically: objects frozen while in flight (a request, a batch)
that later became cyclic garbage were never collected, because the collector does not look into
the permanent generation. With the read model on disk the heap holds only live runs, so a full
pass is cheap again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_start_up() -> None:
    """Move what exists now (modules, settings, the live runs loaded at start) out of the
    collector's scans; call once, when the engine has started."""
    gc.collect()
    gc.freeze()


GcCallback = Callable[[str, dict[str, Any]], None]


def observe_pauses(observe: Callable[[int, float], None]) -> GcCallback:
    """Call ``observe(generation, seconds)`` after every collection: a pass holds the event loop
    (and so every run's next step) for as long as it takes. Returns the callback, for
    ``stop_observing``."""
    began: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            observe(int(info["generation"]), time.perf_counter() - began[0])

    gc.callbacks.append(callback)
    return callback


def stop_observing(callback: GcCallback | None) -> None:
    if callback is not None and callback in gc.callbacks:
        gc.callbacks.remove(callback)
