"""Attribute names of the engine's own spans (``linkflow.*``), one place for the exporter side
and the tests. Failures use the general ``error.type`` (the failure class, e.g. ``http_5xx``);
Kafka spans use the messaging conventions' names (``messaging.py``)."""

from __future__ import annotations

EXECUTION_ID = "linkflow.execution.id"
EXECUTION_STATUS = "linkflow.execution.status"
EXECUTION_PRIORITY = "linkflow.execution.priority"
WORKFLOW_ID = "linkflow.workflow.id"
WORKFLOW_VERSION = "linkflow.workflow.version"
NODE_ID = "linkflow.node.id"
NODE_TYPE = "linkflow.node.type"
NODE_ATTEMPT = "linkflow.node.attempt"
"""On a node's spans: the attempt (1, 2, ...). On a ``retry scheduled`` event: the next one."""
RETRY_DUE_AT = "linkflow.retry.due_at"
RETRY_DELAY_SECONDS = "linkflow.retry.delay_seconds"
TIMER_KIND = "linkflow.timer.kind"
"""``wait``, ``lease``, ``retry`` or ``execution_timeout``."""
TIMER_DUE_AT = "linkflow.timer.due_at"
