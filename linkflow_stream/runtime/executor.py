"""The executor: runs node tasks from ``linkflow.tasks.<pool>.<priority>``, publishes their results.

A task runs as its own asyncio task, at most ``slots[pool]`` of a pool at once (the task consumer
takes a task only when its pool has a free slot), so the consuming agent never waits on a slow
node. Its offset may be committed before it finishes; if this process dies, the orchestrator's
lease runs out and the node is dispatched again (at-least-once, like Temporal activities).
Cancellation arrives on the broadcast control topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.messages import ControlMessage, NodeError, NodeResult, NodeTask
from linkflow_stream.core.node_contract import NodeContext, NodeExecutor, NodeFailure, capped_output
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.runtime.breakers import Breakers
from linkflow_stream.runtime.identity import instance_id
from linkflow_stream.runtime.throttle import NodeThrottle
from linkflow_stream.tracing.messaging import Delivery, TaskSpans, record_outcome

log = logging.getLogger(__name__)

TaskKey = tuple[str, str, int]
EWMA_WEIGHT = 0.2
"""How much the latest task's duration moves a pool's average (about the last 10 tasks count)."""


class Executor:
    def __init__(
        self,
        registry: Mapping[str, NodeExecutor],
        publisher: Publisher,
        slots: int | Mapping[str, int],
        output_max_bytes: int = 1024 * 1024,
        spans: TaskSpans | None = None,
        breakers: Breakers | None = None,
        throttle: NodeThrottle | None = None,
    ) -> None:
        self.breakers = breakers
        """Circuit breakers around http and db attempts (``runtime/breakers.py``); ``None``: none."""
        self.throttle = throttle
        """Rate limits of outgoing calls (``runtime/throttle.py``); ``None``: limits are not applied."""
        self.output_max_bytes = output_max_bytes
        self.spans = spans
        """Makes each attempt's process span; ``None``: tracing is off."""
        self.registry = registry
        self.publisher = publisher
        self.worker_id = instance_id()
        self.slots: dict[str, int] = (
            dict(slots) if isinstance(slots, Mapping) else {topic_names.DEFAULT_POOL: slots}
        )
        """Tasks of each pool this process runs at once."""
        self._slots = {pool: asyncio.Semaphore(n) for pool, n in self.slots.items()}
        self.running: dict[TaskKey, asyncio.Task[None]] = {}
        self.pool_of: dict[TaskKey, str] = {}
        self.in_use: dict[str, int] = dict.fromkeys(self.slots, 0)
        """Slots in use per pool: tasks taken and not yet finished."""
        self.task_seconds: dict[str, float] = {}
        """Per pool, a moving average of how long its recent tasks took (for the autoscaler)."""
        self.freed = {pool: asyncio.Event() for pool in self.slots}
        """Per pool, set whenever one of its tasks finishes: a slot is free again."""
        self._clock: dict[TaskKey, float] = {}

    def free(self, pool: str) -> int:
        """Slots of ``pool`` free now."""
        return self.slots.get(pool, 0) - self.in_use.get(pool, 0)

    async def submit(
        self, task: NodeTask, delivery: Delivery | None = None, pool: str = topic_names.DEFAULT_POOL
    ) -> None:
        """Start ``task`` once a slot of ``pool`` is free; a duplicate of a running attempt is
        ignored. ``delivery`` (where the task record came from) is there when tracing is on."""
        key = (task.execution_id, task.node_id, task.attempt)
        if key in self.running:
            return
        await self._slots[pool].acquire()
        self.in_use[pool] += 1
        self.pool_of[key] = pool
        self._clock[key] = time.monotonic()
        job = asyncio.create_task(
            self._run(task, delivery), name=f"node:{task.execution_id}/{task.node_id}/{task.attempt}"
        )
        self.running[key] = job
        job.add_done_callback(lambda _: self._finished(key))

    def _finished(self, key: TaskKey) -> None:
        self.running.pop(key, None)
        pool = self.pool_of.pop(key)
        took = time.monotonic() - self._clock.pop(key)
        previous = self.task_seconds.get(pool)
        self.task_seconds[pool] = took if previous is None else previous + EWMA_WEIGHT * (took - previous)
        self.in_use[pool] -= 1
        self._slots[pool].release()
        self.freed[pool].set()

    def cancel(self, control: ControlMessage) -> int:
        """Stop the named running attempts; returns how many were stopped."""
        hits = [
            job
            for (execution_id, node_id, _), job in self.running.items()
            if execution_id == control.execution_id and control.node_id in (None, node_id)
        ]
        for job in hits:
            job.cancel()
        return len(hits)

    async def _attempt(self, task: NodeTask, ctx: NodeContext) -> Any:
        """The node's output; raises ``NodeFailure`` for every way the attempt can fail."""
        executor = self.registry.get(task.node_type)
        if executor is None:
            raise NodeFailure("validation", f"this worker has no executor for node type {task.node_type!r}")
        guard = (
            self.breakers.guard(task.node_type, task.config) if self.breakers else contextlib.nullcontext()
        )
        async with guard:  # outside the timeout, so that a timeout counts against the circuit
            try:
                async with asyncio.timeout(task.timeout_seconds):
                    output = await executor.execute(ctx, task.config, task.input)
            except TimeoutError as exc:
                raise NodeFailure("timeout", f"node did not finish within {task.timeout_seconds}s") from exc
        return capped_output(output, self.output_max_bytes)

    async def _run(self, task: NodeTask, delivery: Delivery | None = None) -> None:
        started = now()
        fails_fast = self.breakers is not None and self.breakers.rejects(task.node_type, task.config)
        if self.throttle is not None and task.rate_limit is not None and not fails_fast:
            pool = self.pool_of.get((task.execution_id, task.node_id, task.attempt), topic_names.DEFAULT_POOL)
            until = self.throttle.check(task.rate_limit, started, pool)
            if until is not None:
                await self._throttled(task, started, until)
                return
        ok, output, error = True, None, None
        ctx = NodeContext(
            task.execution_id, task.workflow_id, task.node_id, task.attempt, task.timeout_seconds
        )
        clock = time.perf_counter()
        with self.spans.processing(task, delivery) if self.spans else contextlib.nullcontext() as span:
            try:
                output = await self._attempt(task, ctx)
            except NodeFailure as exc:
                ok, error = False, exc.to_error()
            except asyncio.CancelledError:
                log.info("cancelled %s/%s attempt %d", task.execution_id, task.node_id, task.attempt)
                record_outcome(span, NodeError(error_class="cancelled", message="cancelled"))
                return  # the orchestrator already ended this node; there is no result to report
            except Exception as exc:
                log.exception("node %s/%s crashed", task.execution_id, task.node_id)
                error = NodeFailure("internal", f"{type(exc).__name__}: {exc}", retryable=False).to_error()
                ok = False
            record_outcome(span, error)
        ctx.usage["duration_us"] = round((time.perf_counter() - clock) * 1_000_000)
        result = NodeResult(
            execution_id=task.execution_id,
            node_id=task.node_id,
            attempt=task.attempt,
            ok=ok,
            output=output,
            error=error,
            started_at=started,
            finished_at=now(),
            worker_id=self.worker_id,
            usage=ctx.usage or None,
            logs=ctx.logs or None,
        )
        try:
            await self._publish(task, result)
        except MessageSizeTooLargeError:
            # An output Kafka cannot carry must fail the node visibly, not loop on leases.
            too_big = NodeFailure(
                "resource_limit",
                "the node's output is larger than the broker accepts in one "
                "record; reduce it with an output mapping or a smaller max_rows/size",
            )
            await self._publish(
                task, result.model_copy(update={"ok": False, "output": None, "error": too_big.to_error()})
            )
        except Exception:
            log.exception(
                "could not publish the result of %s/%s; the lease will retry it",
                task.execution_id,
                task.node_id,
            )

    async def _throttled(self, task: NodeTask, at: datetime, until: datetime) -> None:
        """Report that the attempt did not run for want of a token; the orchestrator dispatches it
        again at ``until``. ``ok`` is false with class ``throttled`` (retryable), so an orchestrator
        that does not know ``throttled_until`` retries it as a failure rather than taking it as done."""
        assert task.rate_limit is not None
        error = NodeError(
            error_class="throttled",
            message=f"rate limit {task.rate_limit.per_second:g}/s, burst {task.rate_limit.burst}: no token",
            retryable=True,
        )
        result = NodeResult(
            execution_id=task.execution_id,
            node_id=task.node_id,
            attempt=task.attempt,
            ok=False,
            error=error,
            started_at=at,
            finished_at=at,
            worker_id=self.worker_id,
            throttled_until=until,
            lease_until=task.lease_until,
        )
        try:
            await self._publish(task, result)
        except Exception:
            log.exception(
                "could not publish %s/%s throttled; the lease will retry it", task.execution_id, task.node_id
            )

    async def _publish(self, task: NodeTask, result: NodeResult) -> None:
        await self.publisher.send(
            [
                Outgoing(
                    topic_names.RESULTS,
                    task.execution_id,
                    result,
                    "io.linkflow.node.result",
                    ce_id=f"{task.execution_id}/{task.node_id}/{task.attempt}",
                )
            ]
        )
