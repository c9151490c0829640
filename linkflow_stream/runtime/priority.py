"""Weighted turns between priority classes: how many start requests of each class one
orchestrator batch takes (ADR 0029).

Start requests wait in one queue per priority (they come from one topic per priority), so the
orchestrator can choose which to start. Each batch is a turn: every *active* class (requests
waiting, or inputs of its runs seen a moment ago) gets a share of the batch's room in proportion
to its weight (``LINKFLOW_PRIORITY_WEIGHTS``, 8:3:1 by default), and at least one request, so no
class starves. Room a class leaves unused goes to the highest active class only: while high runs
are about, low requests never fill a batch, so the batches stay short and the next high input is
decided soon. With only low requests about, low takes the whole batch (nothing is held back for
a class that is not there).

Pure: no clock, no I/O; the worker in ``orchestrator.py`` supplies the queue lengths and which
classes are active.
"""

from __future__ import annotations

from collections.abc import Sequence

from linkflow_stream.core.messages import Priority

PRECEDENCE = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""The classes, highest first; weights and counts are given in this order."""


def turns(waiting: Sequence[int], active: Sequence[bool], room: int, weights: Sequence[int]) -> list[int]:
    """How many requests of each class (in ``PRECEDENCE`` order) to take into a batch with
    ``room`` places for requests.

    ``waiting[i]``: requests of class ``i`` waiting; ``active[i]``: class ``i`` counts in the
    sharing (a class with requests waiting is always active). Each active class gets
    ``max(1, room * weight // sum of the active classes' weights)``, up to what it has waiting;
    what is left goes to the highest active class, up to what it has waiting."""
    if not len(waiting) == len(active) == len(weights):
        raise ValueError("waiting, active and weights must name the same classes")
    if any(w < 1 for w in weights):
        raise ValueError("every weight must be at least 1")
    on = [a or n > 0 for a, n in zip(active, waiting, strict=True)]
    total = sum(w for w, a in zip(weights, on, strict=True) if a)
    if total == 0:
        return [0] * len(waiting)
    room = max(0, room)
    take = [
        min(n, max(1, room * w // total)) if a else 0 for n, a, w in zip(waiting, on, weights, strict=True)
    ]
    first = on.index(True)
    left = room - sum(take)
    if left > 0:
        take[first] += min(left, waiting[first] - take[first])
    return take
