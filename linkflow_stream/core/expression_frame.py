"""The bindings frame of one JSONata evaluation: its bounds, its clock and its random source.

Invariant: everything an evaluation may not share with another one lives in this frame, made
fresh for each call, never on the cached compiled expression. jsonata-python's own ``$now()``
and ``$millis()`` read the time stored on a thread's "current" ``Jsonata`` object, which is
whatever expression that thread compiled or evaluated first (so the time is stale, and not the
input record's), and its ``$random()`` is the process-wide unseeded generator. Binding our own
functions here shadows them: the frame is the innermost scope of the evaluation, so every
lookup, inside lambdas and ``$eval`` too, finds these first.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from jsonata import functions, jsonata

from linkflow_stream.core.clock import to_millis


class DeterministicFunctions:
    """``$now``, ``$millis`` and ``$random`` of one evaluation, as the library's native
    functions are: methods found by name and called with missing arguments as ``None``."""

    def __init__(self, now: datetime, seed: str | None) -> None:
        self._millis = to_millis(now)
        # Not cryptography: $random() must repeat for the same seed so a replayed step agrees.
        self._random = random.Random(seed)  # noqa: S311

    def now(self, picture: str | None, timezone: str | None) -> str | None:
        """The given time as ISO 8601, or formatted by an XPath picture like ``$fromMillis``."""
        return functions.Functions.datetime_from_millis(self._millis, picture, timezone)  # type: ignore[no-any-return]

    def millis(self) -> int:
        return self._millis

    def random(self) -> float:
        return self._random.random()


def evaluation_frame(*, timeout_ms: int, max_depth: int, now: datetime, seed: str | None) -> Any:
    """A fresh frame for one ``Jsonata.evaluate`` call; create it right before the call, since
    the timebox's clock starts here. The signatures are the library's own for these functions."""
    frame = jsonata.Jsonata.Frame(None)
    # The timebox registers entry/exit callbacks on this frame only; it checks elapsed time and
    # depth at every evaluation step and raises D1012 (time) or D1011 (depth).
    frame.set_runtime_bounds(timeout_ms, max_depth)
    fns = DeterministicFunctions(now, seed)
    for name, signature in (("now", "<s?s?:s>"), ("millis", "<:n>"), ("random", "<:n>")):
        frame.bind(name, jsonata.Jsonata.function(name, signature, fns, name))
    return frame
