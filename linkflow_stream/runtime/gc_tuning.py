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

THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_start_up() -> None:
    """Move what exists now (modules, settings, the live runs loaded at start) out of the
    collector's scans; call once, when the engine has started."""
    gc.collect()
    gc.freeze()
