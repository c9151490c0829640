"""Prometheus metrics, with the seed's names. Labels are bounded: workflow id, node type,
outcome, priority; never an execution id.

Counters are bumped by the orchestrator that owns an execution, so summing over instances
counts each transition once (a re-processed input after a crash may count twice: metrics are
not the system of record, the event log is). The active gauge is read from the status view, so
it is right after a restart too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.state import ExecutionState

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _QueueDepth(Collector):
    """``linkflow_queue_depth{priority}``: accepted executions that have not started yet."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "linkflow_queue_depth", "Executions accepted and not yet started", labels=["priority"]
        )
        for priority, depth in self.read().items():
            family.add_metric([priority], depth)
        yield family


class Metrics:
    def __init__(
        self,
        active: Callable[[], int],
        queue_depth: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        if queue_depth is not None:
            self.registry.register(_QueueDepth(queue_depth))
        r = self.registry
        self.started = Counter(
            "linkflow_executions_started_total", "Executions started", ["workflow_id", "priority"], registry=r
        )
        self.finished = Counter(
            "linkflow_executions_finished_total", "Executions finished", ["workflow_id", "status"], registry=r
        )
        self.duration = Histogram(
            "linkflow_execution_duration_seconds",
            "Execution wall time, start to end",
            ["workflow_id", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active = Gauge("linkflow_executions_active", "Executions started and not yet ended", registry=r)
        self.active.set_function(lambda: float(active()))
        self.node_runs = Counter(
            "linkflow_node_executions_total", "Node attempts finished", ["node_type", "outcome"], registry=r
        )
        self.node_duration = Histogram(
            "linkflow_node_duration_seconds",
            "Node attempt wall time",
            ["node_type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.node_throttled = Counter(
            "linkflow_node_throttled_total",
            "Node attempts parked on a timer because their rate limit had no token",
            ["node_type"],
            registry=r,
        )
        self.team_starts_throttled = Counter(
            "linkflow_team_starts_throttled_total",
            "POST /api/executions refused with 429 by the team's start rate limit (this instance)",
            registry=r,
        )
        self.dlq = Counter(
            "linkflow_dlq_messages_total", "Records sent to the dead-letter topic", ["topic"], registry=r
        )
        self.admission_rejected = Counter(
            "linkflow_admission_rejected_total",
            "Starts refused because their team had LINKFLOW_MAX_QUEUED_PER_TEAM runs queued, by path "
            "(http: 429; kafka: dead-lettered) and team",
            ["path", "team"],
            registry=r,
        )
        self.start_requests = Counter(
            "linkflow_start_requests_total",
            "Records read from linkflow.start, by outcome: started, duplicate (the run exists), "
            "dead_lettered",
            ["outcome"],
            registry=r,
        )
        self.schedule_fires = Counter(
            "linkflow_schedule_runs_total",
            "Runs fired by schedules (each slot once; see linkflow_start_requests_total for their starts)",
            registry=r,
        )
        self.input_lag = Histogram(
            "linkflow_orchestrator_input_lag_seconds",
            "From an input record's timestamp to the orchestrator deciding on it",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "linkflow_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer: the longest stretch one task held the loop,"
            " which every other step (a high run's decision, its commit, its ?wait answer) waited for",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "linkflow_gc_pause_seconds",
            "How long each pass of Python's cyclic garbage collector held the process, per generation",
            ["generation"],
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.view_lag = Histogram(
            "linkflow_view_lag_seconds",
            "From an event's timestamp to the status view applying it",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.view_folded = Counter(
            "linkflow_view_records_folded_total",
            "Records the read model folded in this process (a restart resumes; it does not refold)",
            registry=r,
        )
        self.view_rows_written = Counter(
            "linkflow_view_rows_written_total",
            "Runs' rows the read model wrote: about one a run, at its end (ADR 0063)",
            registry=r,
        )
        self.view_store_failures = Counter(
            "linkflow_view_store_failures_total",
            "Read-model store writes that failed and were tried again",
            registry=r,
        )
        self.view_expired = Counter(
            "linkflow_view_expired_total",
            "Finished runs deleted from the read model after LINKFLOW_RETENTION_DAYS",
            registry=r,
        )
        self.offset_gaps = Counter(
            "linkflow_input_offset_gaps_total",
            "Input records the orchestrator never saw: offsets skipped that no transaction explains",
            ["topic", "partition"],
            registry=r,
        )
        self.orphans = Counter(
            "linkflow_orphan_inputs_total",
            "Results and commands for executions the orchestrator does not hold (finished and forgotten)",
            ["input"],
            registry=r,
        )
        self.fenced = Counter(
            "linkflow_orchestrator_fenced_total",
            "Partitions this instance lost to another owner's transactional id",
            registry=r,
        )
        self.produce_retries = Counter(
            "linkflow_kafka_produce_retries_total",
            "Produce batches the broker refused and the client sent again, counted instead of logged "
            "(NotEnoughReplicasError: mostly a transaction that began before the previous commit's "
            "marker was written on its partition; a steady rate on a cluster: replicas out of sync)",
            ["error"],
            registry=r,
        )
        self.commit_failures = Counter(
            "linkflow_orchestrator_commit_failures_total",
            "Orchestrator transactions that aborted and were tried again",
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "linkflow_orchestrator_transaction_seconds",
            "One partition's batch: decide, produce, commit",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "linkflow_orchestrator_commit_seconds",
            "One partition's transaction alone: begin, produce, send offsets, commit",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "linkflow_orchestrator_batch_records",
            "Records written by one partition's transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=r,
        )
        self.inputs = Counter(
            "linkflow_orchestrator_inputs_total", "Inputs the orchestrator processed", ["kind"], registry=r
        )
        self.pool_backlog = Gauge(
            "linkflow_pool_backlog",
            "Tasks on a worker pool's topics (linkflow.tasks.<pool>.*) its executors have not taken "
            "yet: the lag of its consumer group",
            ["pool"],
            registry=r,
        )
        self.pool_desired_workers = Gauge(
            "linkflow_pool_desired_workers",
            "Executor processes a pool wants to finish its backlog and running tasks within "
            "LINKFLOW_POOL_DRAIN_SECONDS (formula: ADR 0028), for an autoscaler",
            ["pool"],
            registry=r,
        )
        self.unacknowledged_sends = Gauge(
            "linkflow_api_unacknowledged_sends",
            "The HTTP API's sends Kafka has not acknowledged past their 10 s wait (each answered "
            "503, each still held and retried by the Kafka client); at LINKFLOW_MAX_OVERDUE_SENDS "
            "further sends are refused unsent",
            registry=r,
        )
        self.brokers = Gauge(
            "linkflow_kafka_brokers",
            "Kafka brokers the cluster lists as available (registered and not fenced), counted every "
            "2 s; falls when a broker is lost, 0 when none answers",
            registry=r,
        )

    def observe(self, state: ExecutionState, events: Iterable[ExecutionEvent]) -> None:
        """Count the transitions of one orchestrator step."""
        wf = state.workflow.id
        child = self._child
        for e in events:
            if e.type is EventType.EXECUTION_STARTED:
                child(self.started, wf, state.priority.value).inc()
            elif e.type in (
                EventType.EXECUTION_SUCCEEDED,
                EventType.EXECUTION_FAILED,
                EventType.EXECUTION_CANCELLED,
            ):
                child(self.finished, wf, state.status.value).inc()
                if state.started_at is not None:
                    child(self.duration, wf, state.status.value).observe(
                        (e.at - state.started_at).total_seconds()
                    )
            elif e.type is EventType.NODE_THROTTLED:
                assert e.node_id is not None
                child(self.node_throttled, state.workflow.node(e.node_id).type).inc()
            elif e.type in (EventType.NODE_SUCCEEDED, EventType.NODE_FAILED, EventType.NODE_RETRY_SCHEDULED):
                assert e.node_id is not None
                node = state.nodes[e.node_id]
                node_type = state.workflow.node(e.node_id).type
                outcome = "success" if e.type is EventType.NODE_SUCCEEDED else "failure"
                child(self.node_runs, node_type, outcome).inc()
                if node.started_at is not None:
                    child(self.node_duration, node_type, outcome).observe(
                        (e.at - node.started_at).total_seconds()
                    )

    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, from a dict after the first time: ``labels`` checks its
        arguments and takes a lock at every call, about 3 us each, 13 calls a five-node run. The
        children are never removed, so the dict holds what the metric holds already."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
