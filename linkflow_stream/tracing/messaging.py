"""Kafka spans, after the OpenTelemetry messaging semantic conventions: a ``send <topic>``
PRODUCER span where the API publishes a start request, and a ``process <topic>`` CONSUMER span
where an executor runs a node task. Both carry ``messaging.system=kafka``,
``messaging.operation.type`` and ``.name``, ``messaging.destination.name`` (the real topic) and
``messaging.kafka.message.key``; the consumer's also its partition, offset, consumer group and
message id (the record's ``ce_id``).

The W3C ``traceparent`` travels in the record headers: the send span's context in the start
request's (the run continues it), the node attempt's in the task's (the process span is its
child). A process span is current while the node runs, so an HTTP node's request carries it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
    MessagingSystemValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
    use_span,
)
from opentelemetry.util.types import AttributeValue

from linkflow_stream.core.messages import NodeError, NodeTask
from linkflow_stream.core.trace_context import TraceParent
from linkflow_stream.tracing.attributes import (
    EXECUTION_ID,
    NODE_ATTEMPT,
    NODE_ID,
    NODE_TYPE,
    WORKFLOW_ID,
)
from linkflow_stream.tracing.provider import Tracing

KAFKA = MessagingSystemValues.KAFKA.value
SEND = MessagingOperationTypeValues.SEND.value
PROCESS = MessagingOperationTypeValues.PROCESS.value


def remote_context(parent: TraceParent | None) -> Context:
    """A context whose current span is ``parent`` (a span of another process), or an empty one."""
    if parent is None:
        return Context()
    flags = TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT)
    span = SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True, trace_flags=flags)
    return set_span_in_context(NonRecordingSpan(span), Context())


def traceparent_of(span: Span) -> str | None:
    """``span``'s context as a ``traceparent`` (``None`` for an invalid one)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{'01' if ctx.trace_flags.sampled else '00'}"


@contextlib.contextmanager
def sending(tracing: Tracing, topic: str, key: str, parent: TraceParent | None) -> Iterator[Span]:
    """The PRODUCER span around publishing one record to ``topic``; an exception marks it failed."""
    attributes: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: KAFKA,
        MESSAGING_OPERATION_TYPE: SEND,
        MESSAGING_OPERATION_NAME: SEND,
        MESSAGING_DESTINATION_NAME: topic,
        MESSAGING_KAFKA_MESSAGE_KEY: key,
    }
    span = tracing.tracer.start_span(
        f"{SEND} {topic}", context=remote_context(parent), kind=SpanKind.PRODUCER, attributes=attributes
    )
    with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        try:
            yield span
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            raise


@dataclass(frozen=True)
class Delivery:
    """Where a task record came from, for its process span."""

    topic: str
    partition: int
    offset: int
    group: str
    traceparent: TraceParent | None
    message_id: str | None = None


class TaskSpans:
    """The executor's process spans."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracer = tracing.tracer

    @contextlib.contextmanager
    def processing(self, task: NodeTask, delivery: Delivery | None) -> Iterator[Span | None]:
        """The CONSUMER span of running ``task``, current inside the block; ``None`` for a task
        that came without a trace context (from an orchestrator that does not trace)."""
        if delivery is None or delivery.traceparent is None:
            yield None
            return
        attributes: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: KAFKA,
            MESSAGING_OPERATION_TYPE: PROCESS,
            MESSAGING_OPERATION_NAME: PROCESS,
            MESSAGING_DESTINATION_NAME: delivery.topic,
            MESSAGING_DESTINATION_PARTITION_ID: str(delivery.partition),
            MESSAGING_KAFKA_OFFSET: delivery.offset,
            MESSAGING_KAFKA_MESSAGE_KEY: task.execution_id,
            MESSAGING_CONSUMER_GROUP_NAME: delivery.group,
            EXECUTION_ID: task.execution_id,
            WORKFLOW_ID: task.workflow_id,
            NODE_ID: task.node_id,
            NODE_TYPE: task.node_type,
            NODE_ATTEMPT: task.attempt,
        }
        if delivery.message_id:
            attributes[MESSAGING_MESSAGE_ID] = delivery.message_id
        span = self.tracer.start_span(
            f"{PROCESS} {delivery.topic}",
            context=remote_context(delivery.traceparent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
            yield span


def record_outcome(span: Span | None, error: NodeError | None) -> None:
    """Mark a process span with the attempt's failure class, if it failed."""
    if span is None or error is None:
        return
    span.set_attribute(ERROR_TYPE, error.error_class)
    span.set_status(Status(StatusCode.ERROR, error.message))
