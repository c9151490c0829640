"""Worker registration and health (EXEC-004's registry on port 8085).

Kafka's consumer group is what distributes node tasks: a worker takes work by consuming
``linkflow.tasks.<pool>``, and a dead one's partitions move to the others. The registry records
who is there, with what capacity and tags, and whether it is alive: every engine process
registers itself and heartbeats; other workers register over HTTP. Records live on the compacted
``linkflow.workers`` topic, so any instance answers from its view.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from linkflow_stream.core.clock import iso

HEARTBEAT_SECONDS = 5.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS


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


class WorkerView:
    """The latest record of every worker, folded from ``linkflow.workers``."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerRecord] = {}

    def apply(self, record: WorkerRecord) -> None:
        current = self.workers.get(record.id)
        if current is None or record.heartbeat_at >= current.heartbeat_at:
            self.workers[record.id] = record

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self.workers.get(worker_id)

    def status(self, now: datetime) -> dict[str, Any]:
        """The ``GET /api/workers/status`` body."""
        rows = []
        for w in sorted(self.workers.values(), key=lambda w: w.id):
            if w.state is WorkerState.DEREGISTERED:
                continue
            alive = now - w.heartbeat_at <= timedelta(seconds=ALIVE_SECONDS)
            rows.append(
                {
                    "id": w.id,
                    "capacity": w.capacity,
                    "tags": list(w.tags),
                    "running": w.running,
                    "alive": alive,
                    "engine": w.engine,
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
