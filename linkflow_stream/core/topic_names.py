"""Logical topic names, as declared in ``topics/topics.toml``."""

from __future__ import annotations

from linkflow_stream.core.messages import Priority

WORKFLOWS = "linkflow.workflows"
START = "linkflow.start"
"""Start requests from any producer (``io.linkflow.StartRequest``), turned into ``requests(...)``."""
COMMANDS = "linkflow.commands"
RESULTS = "linkflow.results"
EVENTS = "linkflow.events"
STATE = "linkflow.state.executions"
CONTROL = "linkflow.control"
WORKERS = "linkflow.workers"
KEYS = "linkflow.keys"
CIRCUITS = "linkflow.circuits"
"""Circuit-breaker observations (``io.linkflow.CircuitObservation``), folded by every instance."""
DLQ = "linkflow.dlq"
SCHEDULES = "linkflow.schedules"
SCHEDULE_PROGRESS = "linkflow.schedules.progress"
SIGNALS = "linkflow.signals"
"""Signals from any producer (``io.linkflow.Signal``), turned into ``signal`` commands."""
GATE = "linkflow.gate"
"""Requests to the concurrency gate (ADR 0030): one partition, so one owner counts every slot."""
GATE_STATE = "linkflow.state.gate"
"""The gate's changelog: every queued and admitted run it holds, and its counters."""


def requests(priority: Priority) -> str:
    return f"linkflow.requests.{priority.value}"


DEFAULT_POOL = "default"
"""The pool of a task node that names none."""
TASKS_PREFIX = "linkflow.tasks."
"""Every task topic's name starts so: ``linkflow.tasks.<pool>.<priority>``."""


def tasks(pool: str, priority: Priority = Priority.NORMAL) -> str:
    """The task topic of ``pool`` at ``priority``: one per pool and priority, so an executor can
    take high before normal before low (weighted turns, ``runtime/task_consumer.py``)."""
    return f"{TASKS_PREFIX}{pool}.{priority.value}"


def pool_tasks(pool: str) -> tuple[str, ...]:
    """The three task topics of ``pool``, high first."""
    return tuple(tasks(pool, p) for p in Priority)


REQUESTS = tuple(requests(p) for p in Priority)
