"""An inline node's attempt as one event (ADR 0056).

A transform or condition node runs inside the orchestrator's step (ADR 0006): its
``node_started`` and the event that ends the attempt are decided together, at the same instant,
and committed in the same transaction. Writing both told a reader nothing the second could not
say, and cost every reader a record: five of a five-node diamond's thirteen events were such
starts. The step now writes the ending event alone, marked with the ``dispatch`` and ``attempt``
its start carried; ``evolve`` applies such an event as the start and the end in one.

``merge`` is what the step does to the events the decider gave; ``started_half`` is how a reader
that cares about the start (the attempt's span) sees it again. ``evolve`` and the log lines take
the start from the merged event's own fields instead (``state._started``,
``logs._started_line``): the views fold every event, and building a second event object cost
them a tenth of their fold (issue 13). A
``node_succeeded``, ``node_failed`` or ``node_retry_scheduled`` never carried ``dispatch``
before, so logs written earlier fold as they always did.
"""

from __future__ import annotations

from collections.abc import Sequence

from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent

ATTEMPT_ENDS = frozenset({EventType.NODE_SUCCEEDED, EventType.NODE_FAILED, EventType.NODE_RETRY_SCHEDULED})
"""The events that end an inline attempt in the step that started it."""


def is_merged(event: ExecutionEvent) -> bool:
    """Whether ``event`` also starts the attempt it ends."""
    return event.dispatch is not None and event.type in ATTEMPT_ENDS


def started_half(event: ExecutionEvent) -> ExecutionEvent:
    """The ``node_started`` a merged event stands for (same seq, time, node and attempt)."""
    return ExecutionEvent.model_construct(
        execution_id=event.execution_id,
        seq=event.seq,
        type=EventType.NODE_STARTED,
        at=event.at,
        node_id=event.node_id,
        attempt=event.attempt,
        dispatch=event.dispatch,
    )


def matches_type(event: ExecutionEvent, type_: str) -> bool:
    """Whether ``event`` is one of type ``type_`` for a reader filtering the log by type (the API's
    ``?type=``, ``linkflow events tail --type``): a merged attempt is a ``node_started`` too."""
    return event.type.value == type_ or (type_ == EventType.NODE_STARTED.value and is_merged(event))


def merge(events: Sequence[ExecutionEvent]) -> list[ExecutionEvent]:
    """One step's events with each inline attempt's start folded into the event that ends it,
    and the seqs numbered again from the first one's.

    Merged only where nothing is lost: the start is inline, carries no reason, timer or key, and
    the node's next event in the step ends that attempt at the same instant. Moving the start to
    its end's place is sound because nothing between them can concern the node: its next event is
    the end. A start whose attempt does not end in the step (the run ended first) stays as it was.
    """
    start_of: dict[int, ExecutionEvent] = {}  # index of an end -> the start folded into it
    waiting: dict[str, int] = {}  # node id -> index of its mergeable start, not answered yet
    for index, event in enumerate(events):
        if event.node_id is None:
            continue
        start = waiting.pop(event.node_id, None)
        if start is not None and _ends(events[start], event):
            start_of[index] = events[start]
        if _mergeable_start(event):
            waiting[event.node_id] = index
    if not start_of:
        return list(events)
    folded = {start.seq for start in start_of.values()}
    out: list[ExecutionEvent] = []
    for index, event in enumerate(events):
        if event.seq in folded:
            continue
        seq = events[0].seq + len(out)
        if index in start_of:
            out.append(event.model_copy(update={"seq": seq, "dispatch": start_of[index].dispatch}))
        else:
            out.append(event if event.seq == seq else event.model_copy(update={"seq": seq}))
    return out


def _mergeable_start(event: ExecutionEvent) -> bool:
    return (
        event.type is EventType.NODE_STARTED
        and event.dispatch is Dispatch.INLINE
        and event.reason is None
        and event.due_at is None
        and event.correlation_key is None
    )


def _ends(start: ExecutionEvent, event: ExecutionEvent) -> bool:
    return (
        event.type in ATTEMPT_ENDS
        and event.dispatch is None
        and event.attempt == start.attempt
        and event.at == start.at
    )
