"""OpenTelemetry traces: one trace per execution, a span for the run and one per node attempt,
Kafka spans after the messaging conventions, ``traceparent`` carried in record headers. Off
unless the standard ``OTEL_*`` variables turn it on (``provider.py``); see ADR 0022."""

from linkflow_stream.tracing.execution_spans import RETRY_SCHEDULED, TIMER_FIRED, ExecutionSpans
from linkflow_stream.tracing.messaging import Delivery, TaskSpans, record_outcome, sending, traceparent_of
from linkflow_stream.tracing.provider import Tracing, TracingConfigError, exporter_names, exporters

__all__ = [
    "RETRY_SCHEDULED",
    "TIMER_FIRED",
    "Delivery",
    "ExecutionSpans",
    "TaskSpans",
    "Tracing",
    "TracingConfigError",
    "exporter_names",
    "exporters",
    "record_outcome",
    "sending",
    "traceparent_of",
]
