"""Read side: views folded from the engine's topics. Each can be dropped and rebuilt by replay."""

from projections.status import StatusView, render
from projections.workflows import WorkflowView

__all__ = ["StatusView", "WorkflowView", "render"]
