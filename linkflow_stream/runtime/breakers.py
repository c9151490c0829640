"""The circuit breakers of one engine process: folds ``linkflow.circuits`` and guards attempts.

Every instance reads ``linkflow.circuits`` from its start and folds it (``core.circuit``), so
all instances hold the same circuits: one that another instance opened fails fast here too.
An instance applies its own observations at once (and skips them when they come back from the
log), then publishes them; a healthy target publishes nothing (only counted failures and probe
outcomes are written, see ``CircuitObservation``).

Half-open: each instance lets one probe through per circuit, so with k instances racing, at
most k probes reach a target that is still down (ADR 0027); the first outcome folded decides
for everyone, and a later one only counts (a failure while closed) or re-opens.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from yarl import URL

from linkflow_stream.core.circuit import (
    COUNTED_CLASSES,
    MAX_SECONDS,
    NEUTRAL_CLASSES,
    BreakerPolicy,
    BreakerPolicyError,
    Circuit,
    CircuitObservation,
    admit,
    observe,
    render,
)
from linkflow_stream.core.clock import now
from linkflow_stream.core.node_contract import NodeFailure

log = logging.getLogger(__name__)

Publish = Callable[[CircuitObservation], Awaitable[None]]
MAX_MESSAGE = 300


def _http_target(config: dict[str, Any]) -> str | None:
    """The origin of the node's URL as ``scheme://host:port`` (its default port when it names none)."""
    try:
        url = URL(str(config.get("url", "")))
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host or url.port is None:
        return None
    host = url.host.lower()
    return f"{url.scheme.lower()}://{f'[{host}]' if ':' in host else host}:{url.port}"


def _db_target(config: dict[str, Any]) -> str | None:
    connection = config.get("connection")
    return connection if isinstance(connection, str) and connection else None


TARGETS: dict[str, Callable[[dict[str, Any]], str | None]] = {"http": _http_target, "db": _db_target}
"""Node types that have circuits, and the target (the circuit's key) of one node's config."""


def circuit_of(node_type: str, config: dict[str, Any]) -> tuple[str, str] | None:
    """``(kind, key)`` of the circuit an attempt of this node goes through, or ``None``."""
    target = TARGETS.get(node_type)
    key = target(config) if target is not None else None
    return (node_type, key) if key is not None else None


class Breakers:
    """The circuits this process knows, and the guard every http and db attempt passes."""

    def __init__(
        self,
        publish: Publish | None = None,
        *,
        clock: Callable[[], datetime] = now,
        on_open: Callable[[Circuit], None] | None = None,
        on_reject: Callable[[Circuit], None] | None = None,
    ) -> None:
        self.publish = publish
        self.clock = clock
        self.on_open = on_open
        """Called when an observation of this process opens a circuit (for a counter)."""
        self.on_reject = on_reject
        """Called for every attempt this process failed fast."""
        self.source = uuid.uuid4().hex
        self.circuits: dict[str, Circuit] = {}
        self._probing: set[str] = set()

    # -- the fold ---------------------------------------------------------------------------------
    def apply(self, obs: CircuitObservation) -> Circuit | None:
        """Fold one record of ``linkflow.circuits``; this process's own records were applied when
        made and are skipped."""
        if obs.source == self.source:
            return None
        return self._fold(obs)

    def _fold(self, obs: CircuitObservation) -> Circuit:
        name = f"{obs.kind}:{obs.key}"
        circuit = observe(self.circuits.get(name), obs)
        self.circuits[name] = circuit
        return circuit

    def listing(self, at: datetime | None = None) -> list[dict[str, Any]]:
        """Every circuit that is open or has failures to remember, for the admin API and metrics."""
        at = at or self.clock()
        self._forget(at)
        return [render(c, at) for _, c in sorted(self.circuits.items())]

    def _forget(self, at: datetime) -> None:
        """Drop closed circuits with nothing in their window for an hour: a target that calls for
        no circuit costs no memory (URLs may be computed from run inputs). And open circuits that
        have waited for a probe an hour (``MAX_SECONDS``) past the end of their open time: a
        target nobody calls any more must not hold an entry and a metric series for ever (only a
        probe's success closed one). Called again, such a target starts afresh: closed."""
        horizon = at - timedelta(seconds=MAX_SECONDS)
        for name, c in list(self.circuits.items()):
            if c.open:
                reopens = c.reopens_at()
                idle = reopens is not None and reopens < horizon and (c.changed_at or reopens) < horizon
            else:
                last = c.failures[-1] if c.failures else c.changed_at
                idle = last is None or last < horizon
            if idle:
                del self.circuits[name]

    # -- the guard --------------------------------------------------------------------------------
    def rejects(self, node_type: str, config: dict[str, Any]) -> bool:
        """Whether ``guard`` would fail this attempt fast now (its circuit open, no probe due),
        without taking a probe: the executor asks before it spends a rate-limit token on an
        attempt that will not call out."""
        target = circuit_of(node_type, config)
        if target is None:
            return False
        try:
            policy = BreakerPolicy.parse(config.get("circuit_breaker"))
        except BreakerPolicyError:
            return False  # the guard fails it as validation
        name = f"{target[0]}:{target[1]}"
        probing = name in self._probing
        return (
            policy is not None and admit(self.circuits.get(name), self.clock(), probing=probing) == "reject"
        )

    @contextlib.asynccontextmanager
    async def guard(self, node_type: str, config: dict[str, Any]) -> AsyncIterator[None]:
        """Around one attempt: fails fast with ``circuit_open`` while the circuit is open, lets
        the half-open probe through, and records what the attempt told of its target."""
        target = circuit_of(node_type, config)
        try:
            policy = BreakerPolicy.parse(config.get("circuit_breaker")) if target is not None else None
        except BreakerPolicyError as exc:  # computed by an input mapping: registration did not see it
            raise NodeFailure("validation", f"config.circuit_breaker: {exc}") from exc
        if target is None or policy is None:
            yield
            return
        kind, key = target
        name = f"{kind}:{key}"
        circuit = self.circuits.get(name)
        at = self.clock()
        decision = admit(circuit, at, probing=name in self._probing)
        if decision == "reject":
            assert circuit is not None
            if self.on_reject is not None:
                self.on_reject(circuit)
            reopens = circuit.reopens_at()
            wait = max(0.0, (reopens - at).total_seconds()) if reopens else 0.0
            when = f"half-open in {wait:.1f}s" if wait > 0 else "its half-open probe is under way"
            raise NodeFailure(
                "circuit_open",
                f"the circuit of {name} is open after {len(circuit.failures)} failures "
                f"({circuit.last_error}); not called ({when})",
                retryable=True,
            )
        probe = decision == "probe"
        if probe:
            self._probing.add(name)
        outcome: tuple[bool, str | None, str | None] | None = None
        try:
            yield
            if probe:
                outcome = (True, None, None)
        except NodeFailure as exc:
            if exc.error_type in COUNTED_CLASSES:
                outcome = (False, exc.error_type, exc.message[:MAX_MESSAGE])
            elif probe and exc.error_type not in NEUTRAL_CLASSES:
                outcome = (True, None, None)  # the target answered (a 4xx, say): it is up
            raise
        finally:
            self._probing.discard(name)
            if outcome is not None:
                ok, error_class, message = outcome
                obs = CircuitObservation(
                    kind=kind,
                    key=key,
                    at=self.clock(),
                    ok=ok,
                    probe=probe,
                    error_class=error_class,
                    message=message,
                    failures=policy.failures,
                    window_seconds=policy.window_seconds,
                    open_seconds=policy.open_seconds,
                    source=self.source,
                )
                await self._record(obs, was_open=circuit is not None and circuit.open)

    async def _record(self, obs: CircuitObservation, *, was_open: bool) -> None:
        before = self.circuits.get(f"{obs.kind}:{obs.key}")
        opened_before = before.opened_total if before is not None else 0
        after = self._fold(obs)
        self._forget(obs.at)
        if after.opened_total > opened_before:
            log.warning("circuit %s opened for %gs (%s)", after.name, after.open_seconds, after.last_error)
            if self.on_open is not None:
                self.on_open(after)
        elif was_open and not after.open:
            log.info("circuit %s closed: the probe succeeded", after.name)
        if self.publish is None:
            return
        try:
            await self.publish(obs)
        except Exception:
            log.exception(
                "could not publish an observation of circuit %s; other instances miss it", after.name
            )


STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


class _CircuitStates(Collector):
    """``linkflow_circuit_state{kind,key}``: 0 closed, 1 open, 2 half-open, per known circuit."""

    def __init__(self, breakers: Breakers) -> None:
        self.breakers = breakers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "linkflow_circuit_state",
            "Circuit breaker state per target: 0 closed, 1 open, 2 half-open (a probe may go)",
            labels=["kind", "key"],
        )
        for c in self.breakers.listing():
            family.add_metric([c["kind"], c["key"]], STATE_VALUES[c["state"]])
        yield family


def export_metrics(breakers: Breakers, registry: CollectorRegistry) -> None:
    """The breakers' metrics in ``registry``: the state gauge, and counters of the circuits this
    process's observations opened and of the attempts it failed fast."""
    registry.register(_CircuitStates(breakers))
    opened = Counter(
        "linkflow_circuit_opened_total",
        "Circuits opened (or opened again by a failed probe) by this process's observations",
        ["kind"],
        registry=registry,
    )
    rejected = Counter(
        "linkflow_circuit_rejected_total",
        "Attempts failed fast with circuit_open by this process (the target was not called)",
        ["kind"],
        registry=registry,
    )
    breakers.on_open = lambda c: opened.labels(c.kind).inc()
    breakers.on_reject = lambda c: rejected.labels(c.kind).inc()
