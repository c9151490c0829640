"""The schedule view: every schedule's latest definition and progress, folded from
``linkflow.schedules`` and ``linkflow.schedules.progress`` (both compacted and small).

Every instance folds both, so the API answers for a schedule created anywhere, and the instance
that fires schedules (the scheduler, ``runtime/scheduler.py``) reads its definitions here. The
progress here is for showing; the scheduler keeps its own copy, read to the end of the topic
when it takes over, because it must not act on a view that may lag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from linkflow_stream.core.clock import iso
from linkflow_stream.core.schedule import Schedule, ScheduleProgress


class ScheduleView:
    def __init__(self) -> None:
        self.schedules: dict[str, Schedule] = {}
        self.progress: dict[str, ScheduleProgress] = {}

    def apply(self, schedule_id: str, schedule: Schedule | None) -> None:
        """A schedule's latest definition; ``None`` (a tombstone) deletes it."""
        if schedule is None:
            self.schedules.pop(schedule_id, None)
            self.progress.pop(schedule_id, None)
        else:
            self.schedules[schedule_id] = schedule

    def apply_progress(self, schedule_id: str, progress: ScheduleProgress | None) -> None:
        if progress is None:
            self.progress.pop(schedule_id, None)
        else:
            self.progress[schedule_id] = progress

    def get(self, schedule_id: str) -> Schedule | None:
        return self.schedules.get(schedule_id)

    def listed(self, team: str | None = None) -> list[Schedule]:
        """Every schedule (of ``team`` when given), by id."""
        found = (s for s in self.schedules.values() if team is None or s.team == team)
        return sorted(found, key=lambda s: s.id)

    def body(self, schedule: Schedule, now: datetime) -> dict[str, Any]:
        """The ``GET /api/schedules/{id}`` body: the definition, when it fires next, how far it got."""
        progress = self.progress.get(schedule.id)
        after = max(schedule.effective_from, progress.last_slot if progress else schedule.effective_from, now)
        upcoming = None if schedule.paused else schedule.next_slot(after)
        return {
            **schedule.model_dump(mode="json"),
            "next_slot": iso(upcoming) if upcoming else None,
            "last_slot": iso(progress.last_slot) if progress else None,
            "last_fired_slot": iso(progress.last_fired_slot)
            if progress and progress.last_fired_slot
            else None,
            "last_execution_id": progress.last_execution_id if progress else None,
            "buffered_slot": iso(progress.buffered_slot) if progress and progress.buffered_slot else None,
            "fired": progress.fired if progress else 0,
            "skipped": progress.skipped if progress else 0,
        }
