"""Read side: views folded from the engine's topics. Each can be dropped and rebuilt by replay."""

from projections.log_reader import LogReader
from projections.status import StatusView, render
from projections.workflows import WorkflowView

__all__ = ["LogReader", "StatusView", "WorkflowView", "render"]
