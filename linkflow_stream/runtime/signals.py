"""Turning a signal into commands (ADR 0035): one ``signal`` command per run it reaches, keyed by
the run's id so it lands on the run's partition and its decider sees it in order.

A signal addressed to a run becomes that run's command whether or not the run waits yet (the run
keeps it). A broadcast (a name and a correlation key, no run) reaches the runs that the status
view shows waiting on that name and key when it is looked up, each as its own command with the
broadcast's id; with none waiting it reaches nobody and is not kept.
"""

from __future__ import annotations

from collections.abc import Callable

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, Signal
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.state import ExecutionState
from projections.status import StatusView

CE_TYPE = "io.linkflow.command.signal"


def signal_command(execution_id: str, signal: Signal) -> Outgoing:
    """The command delivering ``signal`` (its id set) to one run."""
    assert signal.id is not None
    command = ExecutionCommand(
        execution_id=execution_id,
        kind=CommandKind.SIGNAL,
        signal=signal.model_copy(update={"execution_id": execution_id}),
        reason=f"signal {signal.name}",
    )
    return Outgoing(
        topic_names.COMMANDS, execution_id, command, CE_TYPE, ce_id=f"{execution_id}/signal/{signal.id}"
    )


def broadcast_targets(
    status: StatusView, signal: Signal, visible: Callable[[ExecutionState], bool] = lambda _s: True
) -> list[str]:
    """The runs a broadcast reaches: waiting on its name and key now, and ``visible`` (the
    sender's team's), in a stable order."""
    assert signal.correlation_key is not None
    return sorted(s.id for s in status.waiting_on(signal.name, signal.correlation_key) if visible(s))
