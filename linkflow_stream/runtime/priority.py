"""Weighted turns between priority classes: how many start requests of each class one
orchestrator batch takes (ADR 0029).

Start requests wait in one queue per priority (they come from one topic per priority), so the
orchestrator chooses which to start; a batch, once being decided, cannot be interrupted, so what
a high request waits for is the lower-priority work already taken into batches. Two rules bound it:

- A class below high never takes more than its weighted share of a batch's room
  (``room * weight // sum(weights)``: 21 low or 64 normal of 256 at 8:3:1), so a high request
  arriving finds little ahead of it. High alone may fill the batch.
- While a higher class is *active* (requests waiting, or an input of one of its runs taken a
  moment ago), a lower class takes in proportion to what the highest active class has waiting:
  ``weight`` requests per ``weight of that class`` of its waiting ones, and at least one, so no
  class starves and a trickle of high runs keeps lower batches tiny.

High takes what the others leave of the room (at least one). Pure: no clock, no I/O; the worker
in ``orchestrator.py`` supplies the queue lengths and which classes are active.
"""

from __future__ import annotations

from collections.abc import Sequence

from linkflow_stream.core.messages import Priority

PRECEDENCE = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""The classes, highest first; weights and counts are given in this order."""


def turns(waiting: Sequence[int], active: Sequence[bool], room: int, weights: Sequence[int]) -> list[int]:
    """How many requests of each class (in ``PRECEDENCE`` order, high first) to take into a batch
    with ``room`` places for requests.

    ``waiting[i]``: requests of class ``i`` waiting; ``active[i]``: class ``i`` counts as present
    (a class with requests waiting always does)."""
    if not len(waiting) == len(active) == len(weights):
        raise ValueError("waiting, active and weights must name the same classes")
    if any(w < 1 for w in weights):
        raise ValueError("every weight must be at least 1")
    on = [a or n > 0 for a, n in zip(active, waiting, strict=True)]
    take = [0] * len(waiting)
    if not any(on):
        return take
    room = max(0, room)
    total = sum(weights)
    top = on.index(True)
    units = -(-waiting[top] // weights[top])
    """The highest active class's demand, in weight units (rounded up)."""
    for i in range(1, len(waiting)):
        if on[i]:
            cap = room * weights[i] // total
            if i > top:
                cap = min(cap, units * weights[i])
            take[i] = min(waiting[i], max(1, cap))
    if on[0]:
        take[0] = min(waiting[0], max(1, room - sum(take)))
    # The "at least one" of each class may overfill a small room; give it back from the lowest
    # classes first, never below their one.
    excess = sum(take) - max(room, sum(1 for t in take if t > 0))
    for i in reversed(range(1, len(take))):
        if excess <= 0:
            break
        back = min(excess, take[i] - 1)
        take[i] -= back
        excess -= back
    return take
