"""Whether this process traces, and the OpenTelemetry tracer it traces with.

Configured by the standard ``OTEL_*`` variables, so every OpenTelemetry knob works as documented
upstream (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``). Tracing is on when ``OTEL_TRACES_EXPORTER`` names an
exporter (``otlp``, ``console``; comma-separated for several) or, with that variable unset, when
an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
Otherwise, and with ``OTEL_SDK_DISABLED=true``, ``Tracing.from_env`` returns ``None`` and the
engine makes no span, reads no clock for one and writes no trace header: the off switch is one
``None`` check where a span would start. OTLP goes over HTTP (``http/protobuf``, the default) or
gRPC (``grpc``), as ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` say,
through the official exporters, batched off the event loop by the SDK's ``BatchSpanProcessor``.

Spans whose ids are fixed in advance (a run's and a node attempt's, ``core/trace_context.py``)
are still made by the SDK's tracer, so sampling, limits, the resource and the processors apply as
to any span: ``pinned`` hands the ids to the tracer's id generator for that one span.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.trace_context import RunTrace
from linkflow_stream.runtime.identity import instance_id

SCOPE = "linkflow_stream"
"""The instrumentation scope every span of the engine is made under."""
DEFAULT_SERVICE_NAME = "linkflow-stream"
"""``service.name`` when ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``)
sets none."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_pinned: ContextVar[tuple[int | None, int] | None] = ContextVar("linkflow_pinned_span_ids", default=None)


class TracingConfigError(LinkflowError):
    """``OTEL_*`` variables that ask for something this engine cannot do (an unknown exporter or
    OTLP protocol): the engine refuses to start rather than run untraced by surprise."""

    error_type = "configuration"


class PinnedIdGenerator(RandomIdGenerator):
    """Random ids, except for a span started inside ``pinned``: it gets the ids given there."""

    def generate_span_id(self) -> int:
        ids = _pinned.get()
        return ids[1] if ids is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        ids = _pinned.get()
        return ids[0] if ids is not None and ids[0] is not None else super().generate_trace_id()


@contextlib.contextmanager
def pinned(trace_id: str | None, span_id: str) -> Iterator[None]:
    """Spans started in this block get span id ``span_id`` (16 hex digits) and, when they are
    roots, trace id ``trace_id`` (32 hex digits)."""
    token = _pinned.set((int(trace_id, 16) if trace_id else None, int(span_id, 16)))
    try:
        yield
    finally:
        _pinned.reset(token)


def nanos(at: datetime) -> int:
    """``at`` as OpenTelemetry's nanoseconds since the epoch, without float rounding."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The span exporters ``environ`` asks for (empty: tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    listed = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not listed:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in listed.split(",") if n.strip()]
    return [] if names == ["none"] else [n for n in names if n != "none"]


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    # Imported here: only the exporter asked for is loaded (gRPC's is the heavier by far).
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    raise TracingConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this engine exports spans over 'http/protobuf' or 'grpc'"
    )


def exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters ``environ`` configures (each reads its own ``OTEL_EXPORTER_*``)."""
    return [_exporter(name, environ) for name in exporter_names(environ)]


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        return _otlp_exporter(environ)
    if name == "console":
        return ConsoleSpanExporter()
    raise TracingConfigError(
        f"OTEL_TRACES_EXPORTER names {name!r}: this engine knows 'otlp', 'console' and 'none'"
    )


def _resource() -> Resource:
    """The resource the ``OTEL_*`` variables describe, with this engine's defaults for what they
    leave out: ``service.name`` and ``service.instance.id`` (the executor's worker id, which names
    this process in the worker registry too)."""
    detected = Resource.create()
    defaults: dict[str, str] = {}
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = DEFAULT_SERVICE_NAME
    if "service.instance.id" not in detected.attributes:
        defaults["service.instance.id"] = instance_id()
    return detected.merge(Resource(defaults))


class Tracing:
    """The tracer of one process, and the contexts of runs' spans as the sampler sees them."""

    def __init__(self, processors: list[SpanProcessor], resource: Resource | None = None) -> None:
        self.provider = TracerProvider(
            resource=resource or Resource.create({"service.name": DEFAULT_SERVICE_NAME}),
            id_generator=PinnedIdGenerator(),
            shutdown_on_exit=False,
        )
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(SCOPE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the ``OTEL_*`` variables configure it, or ``None`` when they leave it off."""
        found = exporters(os.environ if environ is None else environ)
        if not found:
            return None
        processors: list[SpanProcessor] = [BatchSpanProcessor(exporter) for exporter in found]
        return cls(processors, _resource())

    def run_sampled(self, run: RunTrace) -> bool:
        """Whether the run's spans are recorded: the caller's decision when there is a caller,
        else the sampler's for a root with the run's trace id (the same answer everywhere, for
        the samplers that decide by trace id)."""
        if run.parent_sampled is not None:
            return run.parent_sampled
        result = self.provider.sampler.should_sample(None, int(run.trace_id, 16), "execution")
        return result.decision is Decision.RECORD_AND_SAMPLE

    def run_span_context(self, run: RunTrace) -> Context:
        """A context whose current span is the run's span (remote: it is exported elsewhere or
        later), to parent the run's node attempts on."""
        flags = TraceFlags(TraceFlags.SAMPLED if self.run_sampled(run) else TraceFlags.DEFAULT)
        span = SpanContext(int(run.trace_id, 16), int(run.span_id, 16), is_remote=True, trace_flags=flags)
        return trace.set_span_in_context(NonRecordingSpan(span))

    def attempt_traceparent(self, run: RunTrace, node_id: str, attempt: int) -> str:
        """The ``traceparent`` of a node attempt's span, for the task that runs the attempt."""
        flags = "01" if self.run_sampled(run) else "00"
        return f"00-{run.trace_id}-{run.attempt_span_id(node_id, attempt)}-{flags}"

    def task_traceparent(self, state: ExecutionState, node_id: str, attempt: int) -> str:
        """``attempt_traceparent`` of one of ``state``'s node attempts (the orchestrator's step
        puts it in the task's headers)."""
        return self.attempt_traceparent(RunTrace.of(state.id, state.traceparent), node_id, attempt)

    def shutdown(self) -> None:
        """Export what is buffered, then stop (the exporters' own timeouts bound the wait)."""
        self.provider.shutdown()
