"""Worker registration and health (EXEC-004's registry on port 8085).

Kafka's consumer group is what distributes node tasks: a worker takes work by consuming
``linkflow.tasks.<pool>.<priority>``, and a dead one's partitions move to the others of its pool.
The registry records who is there, with what roles, pools and slots, and whether it is alive:
every engine process registers itself and heartbeats; other workers register over HTTP. Records
live on the compacted ``linkflow.workers`` topic, so any instance answers from its view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from linkflow_stream.core.clock import iso

HEARTBEAT_SECONDS = 5.0
"""A worker's heartbeat interval unless it says another (``LINKFLOW_HEARTBEAT_SECONDS``)."""
MISSED_HEARTBEATS = 3
"""Heartbeats a worker may miss before the registry shows it down."""
ALIVE_SECONDS = MISSED_HEARTBEATS * HEARTBEAT_SECONDS


class WorkerState(StrEnum):
    ACTIVE = "active"
    DEREGISTERED = "deregistered"


class WorkerRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    capacity: int
    tags: tuple[str, ...] = ()
    running: int = 0
    state: WorkerState = WorkerState.ACTIVE
    registered_at: datetime
    heartbeat_at: datetime
    engine: bool = False
    roles: tuple[str, ...] = ()
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    pool_slots: dict[str, int] = Field(default_factory=dict)
    pool_running: dict[str, int] = Field(default_factory=dict)
    pool_task_seconds: dict[str, float] = Field(default_factory=dict)

    def alive(self, now: datetime) -> bool:
        """Heard from within three of its own heartbeats: else it shows ``down``."""
        return now - self.heartbeat_at <= timedelta(seconds=MISSED_HEARTBEATS * self.heartbeat_seconds)


@dataclass
class PoolCapacity:
    """What the alive workers of one pool hold (``WorkerView.pool_capacity``)."""

    workers: int = 0
    slots: int = 0
    in_use: int = 0
    task_seconds: list[float] = field(default_factory=list)


FORGET_AFTER = timedelta(hours=1)
"""A worker not heard from this long (down, or deregistered) is forgotten, and its key is given a
tombstone (``forgotten``): every process start is a new worker id, and without this each one
stayed in the compacted topic, in every engine's memory and in the workers listing for ever."""


class WorkerView:
    """The latest record of every worker, folded from ``linkflow.workers``."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerRecord] = {}

    def remove(self, worker_id: str) -> None:
        """Fold a tombstone: the worker is gone."""
        self.workers.pop(worker_id, None)

    def forgotten(self, now: datetime) -> list[str]:
        """The workers not heard from for ``FORGET_AFTER``: their keys to tombstone."""
        return sorted(w.id for w in self.workers.values() if now - w.heartbeat_at > FORGET_AFTER)

    def apply(self, record: WorkerRecord) -> None:
        current = self.workers.get(record.id)
        if current is None or record.heartbeat_at >= current.heartbeat_at:
            self.workers[record.id] = record

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self.workers.get(worker_id)

    def pool_capacity(self, now: datetime) -> dict[str, PoolCapacity]:
        """Per pool: the alive workers serving it, their slots, slots in use and recent task time."""
        pools: dict[str, PoolCapacity] = {}
        for w in self.workers.values():
            if w.state is WorkerState.DEREGISTERED or not w.alive(now):
                continue
            for pool, slots in w.pool_slots.items():
                p = pools.setdefault(pool, PoolCapacity())
                p.workers += 1
                p.slots += slots
                p.in_use += w.pool_running.get(pool, 0)
                if pool in w.pool_task_seconds:
                    p.task_seconds.append(w.pool_task_seconds[pool])
        return pools

    def status(self, now: datetime) -> dict[str, Any]:
        """The ``GET /api/workers/status`` body."""
        rows = []
        for w in sorted(self.workers.values(), key=lambda w: w.id):
            if w.state is WorkerState.DEREGISTERED:
                continue
            alive = w.alive(now)
            rows.append(
                {
                    "id": w.id,
                    "capacity": w.capacity,
                    "tags": list(w.tags),
                    "running": w.running,
                    "alive": alive,
                    "health": "up" if alive else "down",
                    "slots": w.capacity,
                    "slots_in_use": w.running,
                    "engine": w.engine,
                    "roles": list(w.roles),
                    "pools": {
                        pool: {"slots": slots, "slots_in_use": w.pool_running.get(pool, 0)}
                        for pool, slots in sorted(w.pool_slots.items())
                    },
                    "registered_at": iso(w.registered_at),
                    "last_heartbeat": iso(w.heartbeat_at),
                }
            )
        alive_rows = [r for r in rows if r["alive"]]
        return {
            "workers": rows,
            "count": len(rows),
            "alive": len(alive_rows),
            "capacity": sum(r["capacity"] for r in alive_rows),
            "running": sum(r["running"] for r in alive_rows),
        }
