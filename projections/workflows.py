"""The workflow registry view: the latest version of every workflow, folded from
``linkflow.workflows``."""

from __future__ import annotations

from linkflow_stream.core.workflow import WorkflowDefinition


class WorkflowView:
    def __init__(self) -> None:
        self.latest: dict[str, WorkflowDefinition] = {}

    def apply(self, wf: WorkflowDefinition) -> None:
        current = self.latest.get(wf.id)
        if current is None or wf.version >= current.version:
            self.latest[wf.id] = wf

    def get(self, workflow_id: str) -> WorkflowDefinition | None:
        return self.latest.get(workflow_id)

    def next_version(self, workflow_id: str) -> int:
        current = self.latest.get(workflow_id)
        return 1 if current is None else current.version + 1
