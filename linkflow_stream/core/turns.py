"""Weighted turns between the priorities: which of high, normal and low to serve next.

Smooth weighted round robin (as nginx balances upstreams): at every turn each priority with work
waiting earns its weight in credit, the richest is served and pays the sum of the weights earned.
Where all three wait with weights 8:3:1, every 12 turns serve high 8 times, normal 3 and low 1,
interleaved (never 8 highs in a row before the normal); a priority with nothing waiting earns
nothing and is skipped, so an idle engine serves whatever comes at once. Low is served at least
once in every ``sum(weights)`` turns while it waits: it never starves.

Pure: the credits go in and come out, so the executor (per pool) and the orchestrator (per
partition) each keep their own. ``LINKFLOW_PRIORITY_WEIGHTS`` gives the weights.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from linkflow_stream.core.messages import Priority

Credits = Mapping[Priority, int]
"""What each priority has earned and not yet spent; start from ``{}``."""


def weights_of(weights: tuple[int, int, int]) -> dict[Priority, int]:
    """``(high, normal, low)``, as ``Settings.priority_weights`` holds them, by priority."""
    return dict(zip(Priority, weights, strict=True))


def next_turn(
    weights: Mapping[Priority, int], credits: Credits, waiting: Collection[Priority]
) -> tuple[Priority | None, dict[Priority, int]]:
    """The priority to serve now and the credits after; ``None`` (credits unchanged) when nothing
    waits. Ties go to the higher priority."""
    ready = [p for p in Priority if p in waiting]
    if not ready:
        return None, dict(credits)
    after = dict(credits)
    for p in ready:
        after[p] = after.get(p, 0) + weights[p]
    chosen = max(ready, key=lambda p: after[p])  # max keeps the first of equals: the higher priority
    after[chosen] -= sum(weights[p] for p in ready)
    for p in Priority:  # nothing waits there: its credit is reset, it may not hoard turns
        if p not in waiting:
            after.pop(p, None)
    return chosen, after
