"""Schedules: when a workflow runs by itself, and which of its slots fire. Pure: time is passed in.

A schedule names a workflow and a timing (a 5-field cron expression in a time zone, or a fixed
``every_seconds``). Its *slots* are the instants that timing yields. The scheduler looks at the
slots that fell due since it last looked and ``plan`` decides which of them fire:

* ``catchup`` says what to do with slots that fell due while nobody looked (the engine was down,
  or another instance was taking over): ``none`` fires only a slot that is at most
  ``MISFIRE_GRACE`` old, ``latest`` fires the newest due slot however old, ``all`` fires every
  one, oldest first (at most ``MAX_FIRES_PER_PLAN`` per look, the rest on the next).
* ``overlap`` says what to do with a slot while the schedule's previous run is still running:
  ``skip`` drops it, ``allow`` fires it anyway, ``buffer_one`` keeps the newest such slot and
  fires it as soon as the previous run ends.

Invariant: a slot's run id is a function of the schedule id and the slot's instant only
(``execution_id_for``), and ``plan`` moves ``ScheduleProgress.last_slot`` past every slot it
decided about, so a slot is decided once; the scheduler writes the runs a plan fires and the
progress that follows in one Kafka transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEDULE_ID = r"^[A-Za-z0-9_.-]{1,64}$"
MISFIRE_GRACE = timedelta(seconds=60)
"""How late a slot may be looked at and still count as on time (``catchup: none`` fires it)."""
MAX_FIRES_PER_PLAN = 100
"""Most runs one look fires (``catchup: all`` after a long outage); the rest follow on the next."""
MAX_SLOTS_LOOKED_AT = 100_000
"""Most due slots one look walks through; past that, the older ones count as skipped unseen."""
NOT_SEEN_FOR = timedelta(seconds=60)
"""A fired run the views have not seen this long after its slot is taken as not running (its
start was dead-lettered, say), so ``skip`` and ``buffer_one`` do not wait on it for ever."""


class Overlap(StrEnum):
    SKIP = "skip"
    ALLOW = "allow"
    BUFFER_ONE = "buffer_one"


class Catchup(StrEnum):
    NONE = "none"
    ALL = "all"
    LATEST = "latest"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        msg = f"timezone {name!r} is not an IANA time zone name (like 'UTC' or 'Europe/Berlin')"
        raise ValueError(msg) from exc


def check_cron(expression: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), else ValueError."""
    fields = expression.split()
    if len(fields) != 5:
        msg = f"cron {expression!r} must have 5 fields (minute hour day-of-month month day-of-week)"
        raise ValueError(msg)
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        msg = f"cron {expression!r}: {exc}"
        raise ValueError(msg) from exc
    return " ".join(fields)


class Schedule(BaseModel):
    """One schedule as stored: value of ``linkflow.schedules`` (compacted, key = schedule id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=SCHEDULE_ID)
    workflow_id: str = Field(min_length=1)
    cron: str | None = None
    every_seconds: int | None = Field(default=None, ge=1, le=366 * 86_400)
    timezone: str = "UTC"
    input_data: Any = Field(default_factory=dict)
    overlap: Overlap = Overlap.SKIP
    catchup: Catchup = Catchup.NONE
    paused: bool = False
    team: str | None = None
    created_at: datetime
    effective_from: datetime
    """Slots at or before this instant never fire: the creation, the last resume, or the last
    change of timing (slots of an old timing, or missed while paused, are not owed)."""

    @model_validator(mode="after")
    def _one_timing(self) -> Schedule:
        if (self.cron is None) == (self.every_seconds is None):
            msg = "give exactly one of cron (5 fields) and every_seconds"
            raise ValueError(msg)
        if self.cron is not None:
            check_cron(self.cron)
        _zone(self.timezone)
        return self

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """Every slot strictly after ``after``, in order, as UTC instants."""
        if self.every_seconds is not None:
            step = timedelta(seconds=self.every_seconds)
            anchor = self.created_at
            passed = max(0, int((after - anchor) // step) + 1) if after >= anchor else 0
            slot = anchor + step * passed
            while True:
                if slot > after:
                    yield slot
                slot += step
        else:
            assert self.cron is not None
            zone = _zone(self.timezone)
            for local in CronSim(self.cron, after.astimezone(zone)):
                yield local.astimezone(UTC)

    def next_slot(self, after: datetime) -> datetime | None:
        return next(self.slots_after(after), None)


class ScheduleProgress(BaseModel):
    """How far a schedule has fired: value of ``linkflow.schedules.progress`` (compacted, key =
    schedule id), written by the scheduler in the transaction of the runs it fires."""

    model_config = ConfigDict(frozen=True)

    schedule_id: str
    last_slot: datetime
    """Every slot at or before this one is decided: fired, skipped or buffered."""
    last_execution_id: str | None = None
    """The run the schedule fired last (the one ``overlap`` waits on)."""
    last_fired_slot: datetime | None = None
    buffered_slot: datetime | None = None
    """``buffer_one``: the slot that fires as soon as the last run ends."""
    fired: int = 0
    skipped: int = 0


def execution_id_for(schedule_id: str, slot: datetime) -> str:
    """The run id of a slot: the same on every instance, at every try, for ever."""
    return f"sched-{schedule_id}-{slot.astimezone(UTC):%Y%m%dT%H%M%S}Z"


@dataclass(frozen=True)
class Plan:
    fire: tuple[datetime, ...]
    """Slots whose runs start now, oldest first."""
    progress: ScheduleProgress


def plan(
    schedule: Schedule,
    progress: ScheduleProgress | None,
    now: datetime,
    previous_running: bool,
) -> Plan:
    """Which due slots of ``schedule`` fire at ``now``, and the progress after them.

    ``previous_running``: whether the run ``progress.last_execution_id`` names is still going (the
    caller asks the views). Slots are due when after both ``progress.last_slot`` and
    ``schedule.effective_from`` and not after ``now``."""
    start = schedule.effective_from
    last = progress.last_slot if progress is not None else start
    p = progress or ScheduleProgress(schedule_id=schedule.id, last_slot=start)
    if schedule.paused:  # nothing is owed for the pause: resuming moves ``effective_from``
        return Plan(fire=(), progress=p)
    due: list[datetime] = []
    for slot in schedule.slots_after(max(last, start)):
        if slot > now or len(due) >= MAX_SLOTS_LOOKED_AT:
            break
        due.append(slot)
    fired: list[datetime] = []
    buffered = p.buffered_slot
    running = previous_running
    if buffered is not None and not running:
        fired.append(buffered)
        buffered, running = None, schedule.overlap is not Overlap.ALLOW
    if schedule.catchup is Catchup.ALL:
        candidates = due
    elif schedule.catchup is Catchup.LATEST:
        candidates = due[-1:]
    else:  # none
        candidates = [s for s in due if now - s <= MISFIRE_GRACE]
    if len(candidates) > MAX_FIRES_PER_PLAN:  # catchup all after a long outage: the rest next time
        candidates = candidates[:MAX_FIRES_PER_PLAN]
        due = [s for s in due if s <= candidates[-1]]
    skipped = len(due) - len(candidates)
    for slot in candidates:
        if not running or schedule.overlap is Overlap.ALLOW:
            fired.append(slot)
            running = schedule.overlap is not Overlap.ALLOW
        elif schedule.overlap is Overlap.BUFFER_ONE:
            if buffered is not None:
                skipped += 1  # only one waits: the newer slot replaces it
            buffered = slot
        else:
            skipped += 1
    return Plan(
        fire=tuple(fired),
        progress=p.model_copy(
            update={
                "last_slot": max(due[-1], p.last_slot) if due else p.last_slot,
                "last_execution_id": execution_id_for(schedule.id, fired[-1])
                if fired
                else p.last_execution_id,
                "last_fired_slot": fired[-1] if fired else p.last_fired_slot,
                "buffered_slot": buffered,
                "fired": p.fired + len(fired),
                "skipped": p.skipped + skipped,
            }
        ),
    )
