"""What an autoscaler needs of each worker pool (ADR 0028): its backlog and how many workers it
wants, as ``linkflow_pool_backlog{pool}`` and ``linkflow_pool_desired_workers{pool}``.

The backlog is the lag of the pool's consumer group (``<app>.executor.<pool>``) on its three task
topics: tasks dispatched and not yet taken by a worker. The desired count sizes the pool so that
what waits and what runs now is done within ``LINKFLOW_POOL_DRAIN_SECONDS`` (``T``) at the pool's
recent pace::

    outstanding = backlog + in_use
    desired     = ceil(outstanding * d / (S * T))   where d: the mean of the alive workers' recent
                                                    task durations, S: slots per worker
                = ceil(outstanding / S)             while no task of the pool has finished yet
    desired     = max(desired, ceil(in_use / S), 1 if outstanding else 0)

so a pool never asks for fewer workers than its running tasks occupy, asks for one as soon as
anything waits, and for none when idle (scale to zero is the autoscaler's choice: KEDA's
``minReplicaCount``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.kafka.consumers import log_ends
from linkflow_stream.kafka.topics import load_pools
from linkflow_stream.runtime.task_consumer import executor_group
from linkflow_stream.settings import Settings
from projections.workers import WorkerView

log = logging.getLogger(__name__)


def desired_workers(
    backlog: int, in_use: int, slots: int, task_seconds: float | None, drain_seconds: float
) -> int:
    """The formula above: workers of ``slots`` slots each that finish ``backlog`` waiting and
    ``in_use`` running tasks of ``task_seconds`` each within ``drain_seconds``."""
    outstanding = backlog + in_use
    if outstanding <= 0:
        return 0
    if task_seconds is None:
        wanted = math.ceil(outstanding / slots)
    else:
        wanted = math.ceil(outstanding * task_seconds / (slots * drain_seconds))
    return max(wanted, math.ceil(in_use / slots), 1)


def pool_slots(settings: Settings, pool: str) -> int:
    """Slots one process gives ``pool``: ``LINKFLOW_EXECUTOR_SLOTS``, else the pool's declared ones."""
    if settings.executor_slots is not None:
        return settings.executor_slots
    return load_pools()[pool].slots


async def pool_backlogs(settings: Settings, pools: Iterable[str]) -> dict[str, int]:
    """Per pool, the tasks on its topics its consumer group has not taken yet."""
    pools = list(pools)
    ends = await log_ends(
        settings.bootstrap_servers,
        [settings.topic(t) for pool in pools for t in topic_names.pool_tasks(pool)],
    )
    backlog = dict.fromkeys(pools, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        for pool in pools:
            topics = {settings.topic(t) for t in topic_names.pool_tasks(pool)}
            mine = {tp: end for tp, end in ends.items() if tp[0] in topics}
            committed = await admin.list_consumer_group_offsets(executor_group(settings, pool))
            done = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
            backlog[pool] = sum(max(0, end - max(0, done.get(tp, 0))) for tp, end in mine.items())
    finally:
        await admin.close()
    return backlog


@dataclass
class PoolFigures:
    backlog: int
    desired_workers: int


class PoolWatch:
    """Every ``heartbeat_seconds``, the backlog and desired workers of every declared pool."""

    def __init__(
        self,
        settings: Settings,
        workers: WorkerView,
        publish: Callable[[Mapping[str, PoolFigures]], None],
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.publish = publish

    async def measure(self) -> dict[str, PoolFigures]:
        pools = sorted(load_pools())
        backlogs = await pool_backlogs(self.settings, pools)
        capacity = self.workers.pool_capacity(now())
        figures = {}
        for pool in pools:
            held = capacity.get(pool)
            seconds = sum(held.task_seconds) / len(held.task_seconds) if held and held.task_seconds else None
            figures[pool] = PoolFigures(
                backlogs[pool],
                desired_workers(
                    backlogs[pool],
                    held.in_use if held else 0,
                    pool_slots(self.settings, pool),
                    seconds,
                    self.settings.pool_drain_seconds,
                ),
            )
        return figures

    async def run(self) -> None:
        while True:
            try:
                self.publish(await self.measure())
            except (KafkaError, OSError, TimeoutError) as exc:  # a broker away: a line a turn, no traceback
                log.warning("pool backlog not measured (%r); again at the next turn", exc)
            except Exception:
                log.exception("pool backlog not measured; again at the next turn")
            await asyncio.sleep(self.settings.heartbeat_seconds)
