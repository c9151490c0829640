"""The workflow registry view: the latest version of every workflow, folded from
``linkflow.workflows``, and every version the log still holds (for starts that name one)."""

from __future__ import annotations

from linkflow_stream.core.workflow import WorkflowDefinition


class WorkflowView:
    def __init__(self) -> None:
        self.latest: dict[str, WorkflowDefinition] = {}
        self.versions: dict[str, dict[int, WorkflowDefinition]] = {}
        """Every version read, by workflow id. The topic is compacted by workflow id, so a
        version older than the latest is here only if it was read before compaction removed it."""

    def apply(self, wf: WorkflowDefinition) -> None:
        self.versions.setdefault(wf.id, {})[wf.version] = wf
        current = self.latest.get(wf.id)
        if current is None or wf.version >= current.version:
            self.latest[wf.id] = wf

    def get(self, workflow_id: str) -> WorkflowDefinition | None:
        return self.latest.get(workflow_id)

    def versions_of(self, workflow_id: str) -> dict[int, WorkflowDefinition]:
        return self.versions.get(workflow_id, {})

    def next_version(self, workflow_id: str) -> int:
        current = self.latest.get(workflow_id)
        return 1 if current is None else current.version + 1
