"""W3C trace context as plain data: the ``traceparent`` a run continues, and the span ids of the
run and of each node attempt, derived from the execution id.

Why derived and not random: a run's spans are exported by whichever orchestrator instance
commits the event that ends them, maybe long after and in another process than the one that
started the run, and a batch may be decided more than once (an aborted transaction, a takeover).
Ids computed from the execution id (and node and attempt) come out the same every time and
everywhere, so a task dispatched before a restart and the run span exported after it agree on
who is whose parent, and nothing about spans is held in memory. Only the caller's
``traceparent`` is stored with the run (``ExecutionState.traceparent``), because it cannot be
derived. Pure: no OpenTelemetry, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

TRACEPARENT = "traceparent"
"""The header name, in HTTP requests and in Kafka record headers."""

_HEADER = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A parsed ``traceparent``: version 00 fields (a later version is read as 00, as the
    specification asks)."""

    trace_id: str
    """32 lower-case hex digits."""
    span_id: str
    """16 lower-case hex digits: the span this one's children name as parent."""
    sampled: bool = True

    @classmethod
    def parse(cls, value: str | bytes | None) -> TraceParent | None:
        """The context in ``value``, or ``None`` for anything the W3C rules say to ignore."""
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return None
        if not value:
            return None
        match = _HEADER.match(value.strip())
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return cls(trace_id, span_id, sampled=bool(int(flags, 16) & 1))

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def _derived(kind: str, key: str, digits: int, zero: str) -> str:
    derived = hashlib.sha256(f"linkflow/{kind}/{key}".encode()).hexdigest()[:digits]
    return derived if derived != zero else "1".rjust(digits, "0")


@dataclass(frozen=True)
class RunTrace:
    """Where one run's spans sit: its trace id, the run span's id and that span's parent.

    A run that continues a caller's trace (its ``traceparent``) takes the caller's trace id and
    has the caller's span as parent; one without starts a trace whose id comes from the
    execution id."""

    execution_id: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    parent_sampled: bool | None
    """The caller's sampling decision (``None``: no caller; the sampler decides)."""

    @classmethod
    def of(cls, execution_id: str, traceparent: str | None) -> RunTrace:
        parent = TraceParent.parse(traceparent)
        return cls(
            execution_id=execution_id,
            trace_id=parent.trace_id if parent else _derived("trace", execution_id, 32, _ZERO_TRACE),
            span_id=_derived("run", execution_id, 16, _ZERO_SPAN),
            parent_span_id=parent.span_id if parent else None,
            parent_sampled=parent.sampled if parent else None,
        )

    def attempt_span_id(self, node_id: str, attempt: int) -> str:
        """The span id of one node attempt (every attempt, of every node type, has one)."""
        return _derived("attempt", f"{self.execution_id}/{node_id}/{attempt}", 16, _ZERO_SPAN)
