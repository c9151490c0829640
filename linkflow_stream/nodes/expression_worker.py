"""Inline JSONata off the event loop: transform and condition nodes evaluate in a worker thread.

The orchestrator runs inline nodes inside its step, on the event loop that also serves the HTTP
API, the executor agent, timers and Kafka heartbeats. Evaluation is pure Python and holds the
GIL while it runs, but a worker thread hands the GIL back every switch interval (5 ms), so the
loop keeps running, only slower (ADR 0015).

A thread cannot be stopped from outside: the timebox inside the evaluation
(``core.expressions.evaluate``) is what ends a runaway, at the node's timeout. The caller waits
``GRACE_SECONDS`` longer than that, then fails the node as ``timeout`` anyway, so a single step
that is slow on its own cannot hold the node past its timeout; that thread finishes in the
background and its result is dropped.

The pool is our own, not the loop's default executor, so a stuck evaluation never takes a slot
that DNS resolution or another ``to_thread`` user is waiting for. Time spent queued for a
worker counts against the node's timeout.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from linkflow_stream.core.expressions import evaluate
from linkflow_stream.core.node_contract import NodeFailure

WORKERS = 4
"""Threads for inline evaluation. The GIL runs one at a time anyway; the spares let new
evaluations start while an overrunning one (see above) is still finishing in the background."""

ON_LOOP_SECONDS = 0.02
"""How long an expression may run on the event loop before it moves to a worker thread."""

GRACE_SECONDS = 0.5
"""How long past its timeout the caller waits for the timebox to stop an evaluation."""


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Created on first use, so importing the node types starts no threads."""
    return ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="linkflow-jsonata")


async def evaluate_bounded(
    source: str,
    data: dict[str, Any],
    *,
    timeout_seconds: float,
    now: datetime | None = None,
    seed: str | None = None,
) -> Any:
    """``evaluate`` within ``timeout_seconds`` without holding the event loop longer than
    ``ON_LOOP_SECONDS``; the same results and the same ``NodeFailure`` classes.

    Almost every expression finishes in microseconds, and a thread hop costs up to a GIL switch
    interval each way on a busy process (measured: a five-transform run took 50 ms instead of
    1 ms). So evaluation starts on the loop with a short bound, and only an expression that
    reaches it is evaluated again, from the start, in a worker thread with the node's bound.
    Both evaluations see the same time and seed, so the result does not depend on where it ran."""
    if 0 < ON_LOOP_SECONDS < timeout_seconds:
        try:
            return evaluate(source, data, timeout_seconds=ON_LOOP_SECONDS, now=now, seed=seed)
        except NodeFailure as exc:
            if exc.error_type != "timeout":
                raise
    job = asyncio.get_running_loop().run_in_executor(
        _pool(),
        functools.partial(evaluate, source, data, timeout_seconds=timeout_seconds, now=now, seed=seed),
    )
    try:
        return await asyncio.wait_for(job, timeout_seconds + GRACE_SECONDS)
    except TimeoutError as exc:
        raise NodeFailure(
            "timeout",
            f"JSONata evaluation did not finish within its time limit of {timeout_seconds:g} s",
            retryable=False,
        ) from exc
