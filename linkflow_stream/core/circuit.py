"""Circuit breakers, as a pure state machine: a circuit is the fold of its observations.

Invariant: a circuit's state is a function of the observations folded into it, in order, and of
nothing else; time comes from each observation's ``at`` (when folding) or from the caller's
``now`` (when admitting an attempt), never from a clock in here. So every engine instance that
folds ``linkflow.circuits`` holds the same circuits, and a test passes time in.

One circuit per target: an HTTP origin (scheme, host, port) for ``http`` nodes, a connection
name for ``db`` nodes. Its life:

- ``closed``: attempts go through. A failure of a retryable class (``COUNTED_CLASSES``) is
  remembered for ``window_seconds``; the ``failures``-th one within the window opens it.
- ``open``: attempts fail fast with ``circuit_open`` (retryable, so the node's retry policy and
  backoff apply) until ``open_seconds`` have passed since it opened.
- ``half_open`` (open, and ``open_seconds`` are over): one attempt, the probe, is let through;
  its success closes the circuit (failures forgotten), its failure opens it again from then.

The thresholds come with each observation (the policy of the node that made it): nodes of
different workflows may call one origin with different policies, and the fold stays a function
of the log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from linkflow_stream.core.node_contract import ConfigError

COUNTED_CLASSES = frozenset({"timeout", "connection", "http_429", "http_5xx"})
"""Failure classes that count against a circuit: the retryable ones a target causes."""
NEUTRAL_CLASSES = frozenset({"validation", "internal", "cancelled", "circuit_open"})
"""Outcomes that say nothing of the target (it was not reached, or not for its own fault)."""
MAX_FAILURES = 1000
MAX_SECONDS = 3600.0
"""Longest window and open time: ``linkflow.circuits`` keeps observations for twice this long."""


class BreakerPolicyError(ValueError):
    """A ``circuit_breaker`` setting of the wrong shape; the message says what is wanted."""


@dataclass(frozen=True)
class BreakerPolicy:
    """When a circuit opens and how long it stays open. The default applies to every http and db
    node that sets no ``circuit_breaker``: 5 failures within 30 s open it for 30 s."""

    failures: int = 5
    window_seconds: float = 30.0
    open_seconds: float = 30.0

    @classmethod
    def parse(cls, value: Any) -> BreakerPolicy | None:
        """A node's ``circuit_breaker`` setting: absent (``None``) is the default policy,
        ``false`` is none (``None`` returned), an object sets any of the three fields."""
        if value is None or value is True:
            return cls()
        if value is False:
            return None
        if not isinstance(value, dict):
            msg = 'must be false or an object {"failures", "window_seconds", "open_seconds"}'
            raise BreakerPolicyError(msg)
        unknown = sorted(set(value) - {"failures", "window_seconds", "open_seconds"})
        if unknown:
            msg = f"unknown field {unknown[0]!r} (known: failures, window_seconds, open_seconds)"
            raise BreakerPolicyError(msg)
        default = cls()
        failures = value.get("failures", default.failures)
        if not isinstance(failures, int) or isinstance(failures, bool) or not 1 <= failures <= MAX_FAILURES:
            msg = f"failures must be an integer from 1 to {MAX_FAILURES}"
            raise BreakerPolicyError(msg)
        seconds = {}
        for name in ("window_seconds", "open_seconds"):
            number = value.get(name, getattr(default, name))
            if (
                not isinstance(number, int | float)
                or isinstance(number, bool)
                or not 0 < number <= MAX_SECONDS
            ):
                msg = f"{name} must be a number of seconds above 0, at most {MAX_SECONDS:g}"
                raise BreakerPolicyError(msg)
            seconds[name] = float(number)
        return cls(failures, seconds["window_seconds"], seconds["open_seconds"])


def check_config(config: dict[str, Any]) -> None:
    """``ConfigError`` naming ``circuit_breaker`` when a node's setting has the wrong shape."""
    try:
        BreakerPolicy.parse(config.get("circuit_breaker"))
    except BreakerPolicyError as exc:
        raise ConfigError("circuit_breaker", str(exc)) from exc


class CircuitObservation(BaseModel):
    """What one attempt told of its target. Value of ``linkflow.circuits`` (key: ``kind:key``).

    Only observations that can change a circuit are written: every counted failure, and the
    outcome of every half-open probe. A healthy target costs no record."""

    model_config = ConfigDict(frozen=True)

    kind: str
    """``http`` or ``db``."""
    key: str
    """The HTTP origin (``https://host:443``) or the database connection's name."""
    at: datetime
    ok: bool
    probe: bool = False
    """The attempt was the half-open probe of its instance."""
    error_class: str | None = None
    message: str | None = None
    failures: int
    window_seconds: float
    open_seconds: float
    source: str
    """The process that observed it (a fresh id per process start); it skips its own records
    when folding, having applied them already."""


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Admission = Literal["allow", "probe", "reject"]


@dataclass(frozen=True, slots=True)
class Circuit:
    """One target's circuit, as folded so far."""

    kind: str
    key: str
    open: bool = False
    failures: tuple[datetime, ...] = ()
    """Counted failures within the window of the latest one (oldest first)."""
    opened_at: datetime | None = None
    open_seconds: float = 30.0
    window_seconds: float = 30.0
    threshold: int = 5
    opened_total: int = 0
    last_error: str | None = None
    changed_at: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.key}"

    def reopens_at(self) -> datetime | None:
        """When an open circuit lets its probe through."""
        if not self.open or self.opened_at is None:
            return None
        return self.opened_at + timedelta(seconds=self.open_seconds)

    def state(self, now: datetime) -> CircuitState:
        reopens = self.reopens_at()
        if reopens is None:
            return CircuitState.CLOSED
        return CircuitState.OPEN if now < reopens else CircuitState.HALF_OPEN

    def recent_failures(self, now: datetime) -> int:
        """Counted failures within the window before ``now`` (all of them while open)."""
        if self.open:
            return len(self.failures)
        since = now - timedelta(seconds=self.window_seconds)
        return sum(1 for at in self.failures if at > since)


def admit(circuit: Circuit | None, now: datetime, *, probing: bool) -> Admission:
    """Whether an attempt may call the target now. ``probing``: this instance's probe of the
    circuit is still running (then every other attempt waits for its outcome)."""
    if circuit is None:
        return "allow"
    state = circuit.state(now)
    if state is CircuitState.CLOSED:
        return "allow"
    if state is CircuitState.OPEN or probing:
        return "reject"
    return "probe"


def _opened(
    circuit: Circuit, at: datetime, failures: tuple[datetime, ...], obs: CircuitObservation
) -> Circuit:
    return replace(
        circuit,
        open=True,
        failures=failures,
        opened_at=at,
        open_seconds=obs.open_seconds,
        opened_total=circuit.opened_total + 1,
        changed_at=at,
    )


def observe(circuit: Circuit | None, obs: CircuitObservation) -> Circuit:
    """The circuit after ``obs`` (a fresh closed one for a target never seen)."""
    current = circuit or Circuit(kind=obs.kind, key=obs.key)
    if obs.ok:
        if current.open and obs.probe:
            return replace(current, open=False, failures=(), opened_at=None, changed_at=obs.at)
        return current  # a success does not forgive failures within the window; a late one does not close
    error = f"{obs.error_class}: {obs.message}" if obs.message else obs.error_class
    since = obs.at - timedelta(seconds=obs.window_seconds)
    failures = (*(at for at in current.failures if at > since or current.open), obs.at)
    current = replace(
        current,
        failures=failures[-MAX_FAILURES:],
        window_seconds=obs.window_seconds,
        threshold=obs.failures,
        last_error=error,
    )
    if current.open:
        if obs.probe and (current.opened_at is None or obs.at >= current.opened_at):
            return _opened(current, obs.at, (obs.at,), obs)  # the probe failed: open again from now
        return current  # an attempt let through before it opened, failing late: opened_at stays
    recent = tuple(at for at in failures if at > since)
    if len(recent) >= obs.failures:
        return _opened(current, obs.at, recent, obs)
    return replace(current, failures=recent)


def render(circuit: Circuit, now: datetime) -> dict[str, Any]:
    """A circuit as ``GET /api/admin/circuits`` lists it."""
    reopens = circuit.reopens_at()
    return {
        "kind": circuit.kind,
        "key": circuit.key,
        "state": circuit.state(now).value,
        "failures": circuit.recent_failures(now),
        "threshold": circuit.threshold,
        "window_seconds": circuit.window_seconds,
        "open_seconds": circuit.open_seconds,
        "opened_at": circuit.opened_at.isoformat() if circuit.opened_at else None,
        "half_open_at": reopens.isoformat() if reopens else None,
        "opened_total": circuit.opened_total,
        "last_error": circuit.last_error,
        "changed_at": circuit.changed_at.isoformat() if circuit.changed_at else None,
    }
