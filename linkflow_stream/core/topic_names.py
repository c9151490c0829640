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
GATE = "linkflow.gate"
"""Requests to the concurrency gate (ADR 0030): one partition, so one owner counts every slot."""
GATE_STATE = "linkflow.state.gate"
"""The gate's changelog: every queued and admitted run it holds, and its counters."""


def requests(priority: Priority) -> str:
    return f"linkflow.requests.{priority.value}"


def tasks(pool: str) -> str:
    return f"linkflow.tasks.{pool}"


REQUESTS = tuple(requests(p) for p in Priority)
