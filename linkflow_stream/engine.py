"""The composition root: builds the orchestrator, the executor, the views and the HTTP APIs of
one ``linkflow run`` process and starts and stops them in order. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

from aiohttp import web
from aiokafka import ConsumerRecord, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.admission import Admission
from linkflow_stream.core.auth import ApiKey, auth_required, open_beyond_loopback
from linkflow_stream.core.circuit import CircuitObservation
from linkflow_stream.core.clock import now
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.messages import ControlMessage
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.schedule import Schedule, ScheduleProgress
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.auth import authentication
from linkflow_stream.http.ops import ops_app
from linkflow_stream.http.queue_status import queue_status
from linkflow_stream.http.registry import RegistryApi
from linkflow_stream.http.start_limit import TeamStartLimiter
from linkflow_stream.kafka import protocol_decoders, protocol_encoders
from linkflow_stream.kafka.broker_watch import BrokerWatch
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.codecs import codec_for, register_schemas
from linkflow_stream.kafka.connection_logs import condense_connection_errors
from linkflow_stream.kafka.consumers import LogUnavailable, log_ends, record_at
from linkflow_stream.kafka.execution_log import execution_events
from linkflow_stream.kafka.log_reader import Handler, LogReader
from linkflow_stream.kafka.metadata import cluster_id
from linkflow_stream.kafka.pools import TaskPools
from linkflow_stream.kafka.produce_retries import count_routine_retries
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.topics import load_pools
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.replay import view_topics
from linkflow_stream.runtime import event_loop, gc_tuning
from linkflow_stream.runtime.breakers import Breakers, export_metrics
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.runtime.gate import Gate
from linkflow_stream.runtime.loop_lag import watch_loop
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.orchestrator import Orchestrator
from linkflow_stream.runtime.pool_metrics import PoolFigures, PoolWatch, pool_slots
from linkflow_stream.runtime.scheduler import Scheduler
from linkflow_stream.runtime.signal_intake import SignalIntake
from linkflow_stream.runtime.start_intake import StartIntake
from linkflow_stream.runtime.step import Stepper
from linkflow_stream.runtime.task_consumer import TaskConsumer
from linkflow_stream.runtime.throttle import NodeThrottle
from linkflow_stream.settings import ROLES, Settings
from linkflow_stream.tracing import ExecutionSpans, TaskSpans, Tracing, TracingConfigError
from projections.keys import KeyView
from projections.logs import LogView
from projections.read_model import ReadModel
from projections.schedules import ScheduleView
from projections.status import StatusView
from projections.store import open_store
from projections.store.sql import SCHEMA_VERSION
from projections.workers import FORGET_AFTER, WorkerRecord, WorkerState, WorkerView
from projections.workflows import WorkflowView

log = logging.getLogger(__name__)

WORKFLOW_READ_SECONDS = 10.0
"""Longest the read of an older workflow version from the log may take (the broker is away)."""
STOP_FLUSH_SECONDS = 10.0
"""Longest a stop waits to write the read model's rows behind memory (the store is away): the
restart folds their records again."""
STOP_OVERDUE = 6
"""The exit code of a process whose stop was abandoned (``Settings.stop_timeout_seconds``); no
other exit of the CLI's uses it (``cli.EXIT_CODES``: 1-5)."""


class StartRefusedError(LinkflowError):
    """A configuration the engine will not serve (auth required and no key exists)."""

    error_type = "configuration"


def placement_problem(settings: Settings) -> str | None:
    """Why this process's roles and pools cannot run (``None``: they can)."""
    unknown = [r for r in settings.roles if r not in ROLES]
    if unknown or not settings.roles:
        return f"--roles: {', '.join(unknown) or 'none given'}: the roles are {', '.join(ROLES)}"
    if "api" in settings.roles and "views" not in settings.roles:
        return "--roles: the api role answers from the views: add views (api,views)"
    declared = load_pools()
    undeclared = [p for p in settings.executor_pools if p not in declared]
    if undeclared or not settings.executor_pools:
        return (
            f"--pools: {', '.join(undeclared) or 'none given'}: topics/topics.toml declares the pools "
            f"{', '.join(sorted(declared))} (add a [[pool]] there and run `linkflow topics apply`)"
        )
    return None


class Engine:
    """Everything one ``linkflow run`` process holds: the parts its roles name (ADR 0028)."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.roles = frozenset(settings.roles)
        self.codec = codec or codec_for(settings)
        self.registry = build_registry(settings)
        self.publisher = Publisher(settings, self.codec)
        self.status = StatusView(finished_cache=settings.views_finished_cache)
        self.logs = LogView()
        self.store = open_store(settings.views_url, settings.data_dir, f"{settings.topic_prefix}views")
        self.metrics = Metrics(
            active=self.status.active_count,
            queue_depth=lambda: {p: c["queued"] for p, c in self.status.queue_counts().items()},
        )
        self.metrics.unacknowledged_sends.set_function(lambda: float(self.publisher.overdue.count))
        self.pools = TaskPools(settings)
        self.tracing = Tracing.from_env()
        """Traces, when the ``OTEL_*`` variables turn them on (``tracing/provider.py``); else ``None``."""
        stepper = Stepper(
            self.registry,
            decider_config(self.registry, settings),
            pool_exists=self.pools.exists,
            output_max_bytes=settings.node_output_max_bytes,
            task_traceparent=self.tracing.task_traceparent if self.tracing else None,
            merge_inline=settings.merge_inline_attempts,
        )
        self.orchestrator = Orchestrator(
            settings,
            self.codec,
            stepper,
            self.metrics,
            spans=ExecutionSpans(self.tracing) if self.tracing else None,
        )
        self.breakers = Breakers(self._publish_circuit)
        export_metrics(self.breakers, self.metrics.registry)
        self.gate = Gate(settings, self.codec, self.metrics)
        """The concurrency gate (ADR 0030); decides only in the instance that owns it."""
        self.executor = Executor(
            self.registry,
            self.publisher,
            {pool: pool_slots(settings, pool) for pool in settings.executor_pools},
            settings.node_output_max_bytes,
            spans=TaskSpans(self.tracing) if self.tracing else None,
            breakers=self.breakers,
            throttle=NodeThrottle(self.live_executors),
        )
        self.tasks = TaskConsumer(
            settings,
            self.codec,
            self.executor,
            self.publisher,
            on_dead_letter=lambda topic: self.metrics.dlq.labels(topic).inc(),
        )
        self.workflows = WorkflowView(
            self._workflow_record, lambda value: self.codec.decode(value, WorkflowDefinition)
        )
        self.workers = WorkerView()
        self.pool_watch = PoolWatch(settings, self.workers, self._pool_figures)
        self.keys = KeyView()
        self.auth_required = auth_required(settings.auth, settings.api_host)
        self.views = ReadModel(
            self.store,
            self.codec,
            view_topics(settings),
            status=self.status,
            logs=self.logs,
            on_event=self._on_event,
            on_write_failure=self.metrics.view_store_failures.inc,
            on_rows_written=self.metrics.view_rows_written.inc,
            row_delay=settings.views_row_delay_seconds,
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)

        def view(topics: list[str], handle: Handler) -> LogReader:
            return LogReader(
                settings.bootstrap_servers,
                [settings.topic(t) for t in topics],
                handle,
                on_error=self._view_error,
                prepare=self.codec.learner,
            )

        self._view = view
        self.admission = Admission(
            settings.max_queued_per_team, settings.admission_retry_after_seconds, self.status.queued_of_team
        )
        self.intake = StartIntake(
            settings,
            self.codec,
            self.workflows,
            self.views.body,
            self.sync_views,
            self.metrics,
            admission=self.admission,
        )
        self.signal_intake = SignalIntake(
            settings,
            self.codec,
            self.publisher,
            self.status,
            self.views.body,
            self.sync_views,
            on_dead_letter=lambda topic: self.metrics.dlq.labels(topic).inc(),
        )
        self.schedules = ScheduleView()
        self.schedule_reader = view([topic_names.SCHEDULES, topic_names.SCHEDULE_PROGRESS], self._on_schedule)
        self.scheduler = Scheduler(
            settings,
            self.codec,
            self.schedules,
            self.views.body,
            self.metrics,
            ready=self.schedule_reader.caught_up.is_set,
        )
        self.status_reader = self._status_reader({})
        self.key_reader = view([topic_names.KEYS], self._on_key)
        self.workers_reader = view([topic_names.WORKERS], self._on_worker)
        self.circuits_reader = view([topic_names.CIRCUITS], self._on_circuit)
        self.readers = [
            view([topic_names.WORKFLOWS], self._on_workflow),
            self.status_reader,
            self.workers_reader,
            self.key_reader,
            self.schedule_reader,
            self.circuits_reader,
        ]
        self.control = LogReader(
            settings.bootstrap_servers,
            [settings.topic(topic_names.CONTROL)],
            self._on_control,
            from_beginning=False,
            prepare=self.codec.learner,
        )
        self._runners: list[web.AppRunner] = []
        self._executor_started = False
        self.brokers_listed: int | None = None
        """Brokers the cluster listed at the last look of the broker watch (``None`` before it)."""
        self._background: list[asyncio.Task[None]] = []
        self._gc_watch: gc_tuning.GcCallback | None = None
        self._uncount_retries: Callable[[], None] = lambda: None

    # -- views --------------------------------------------------------------------------------
    def _on_workflow(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.workflows.apply(
            self.codec.decode(record.value, WorkflowDefinition), (record.partition, record.offset)
        )

    async def _workflow_record(self, partition: int, offset: int) -> bytes | None:
        """An older workflow version's record, read back from the log (``WorkflowView.version``)."""
        tp = TopicPartition(self.settings.topic(topic_names.WORKFLOWS), partition)
        value = await record_at(self.settings.bootstrap_servers, tp, offset, WORKFLOW_READ_SECONDS)
        if value is not None:
            try:
                await self.codec.learn([value])  # a schema id new to this process (a registry)
            except Exception as exc:
                what = f"the schema of the workflow record at offset {offset}"
                raise LogUnavailable(f"{what} could not be read: {exc!r}") from exc
        return value

    def _on_worker(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:  # a tombstone: forgotten (``heartbeat``)
            self.workers.remove((record.key or b"").decode(errors="replace"))
            return
        self.workers.apply(self.codec.decode(record.value, WorkerRecord))

    def _on_key(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.keys.apply(self.codec.decode(record.value, ApiKey))

    def _on_schedule(self, record: ConsumerRecord[bytes, bytes]) -> None:
        schedule_id = (record.key or b"").decode()
        if record.topic == self.settings.topic(topic_names.SCHEDULES):
            found = None if record.value is None else self.codec.decode(record.value, Schedule)
            self.schedules.apply(schedule_id, found)
        else:
            progress = None if record.value is None else self.codec.decode(record.value, ScheduleProgress)
            self.schedules.apply_progress(schedule_id, progress)

    def _on_circuit(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.breakers.apply(self.codec.decode(record.value, CircuitObservation))

    async def _publish_circuit(self, obs: CircuitObservation) -> None:
        await self.publisher.send(
            [
                Outgoing(
                    topic_names.CIRCUITS,
                    f"{obs.kind}:{obs.key}",
                    obs,
                    "io.linkflow.circuit.observed",
                    time=obs.at,
                )
            ]
        )

    async def _register_schemas(self) -> None:
        """With a schema registry: every topic's value schema registered, and the ids every
        subject holds known, before anything is written or read (ADR 0025)."""
        if self.codec.ids is None:
            return
        ids = await register_schemas(self.codec, self.settings, await self.pools.names())
        log.info(
            "schema registry %s: %d subjects registered, %d schema ids known; values are written "
            "in the Confluent wire format",
            self.settings.schema_registry_url,
            len(ids),
            len(self.codec.ids.writers),
        )

    async def _check_auth(self) -> None:
        """Refuse to serve beyond this machine without keys; warn when told to anyway."""
        host = self.settings.api_host
        await self.key_reader.start()  # first of the readers either way: small, and needed now if keys are
        if not self.auth_required:
            warning = open_beyond_loopback(self.settings.auth, host)
            if warning is not None:
                log.warning("%s", warning)
            return
        await self.key_reader.caught_up.wait()
        if not self.keys.any_active():
            await self.key_reader.stop()
            raise StartRefusedError(
                f"API keys are required (the API listens on {host}"
                + (", LINKFLOW_AUTH=required" if self.settings.auth == "required" else "")
                + ") but none exists: create one with `linkflow keys create --team <team> --role admin`, "
                "or listen on 127.0.0.1 only (LINKFLOW_API_HOST), or set LINKFLOW_AUTH=disabled on purpose"
            )
        log.info("API keys required: %d active keys", sum(k.active for k in self.keys.listed()))

    def _status_reader(self, positions: Mapping[tuple[str, int], int]) -> LogReader:
        """Events, requests and dead letters (a start request's ends its pending run), batch by
        batch into the read model, from its stored positions."""
        return LogReader(
            self.settings.bootstrap_servers,
            [self.settings.topic(t) for t in (topic_names.EVENTS, *topic_names.REQUESTS, topic_names.DLQ)],
            handle_batch=self._fold,
            positions=positions,
            prepare=self.codec.learner,
            prepared=self.views.decodes,
            urgent=self.views.urgent,
            handle_urgent=self.views.fold_ahead,
            yield_to_urgent=self.views.urgent_live,
        )

    async def _fold(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        await self.views.fold(records)
        self.metrics.view_folded.inc(len(records))

    def _produce_retried(self, error: str) -> None:
        self.metrics.produce_retries.labels(error).inc()

    def _gc_paused(self, generation: int, seconds: float) -> None:
        self.metrics.gc_pause.labels(str(generation)).observe(seconds)

    def _on_event(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.metrics.view_lag.observe(max(0.0, time.time() - record.timestamp / 1000))

    async def _open_read_model(self) -> None:
        """Open the store, take the live runs into memory and read on from the stored positions.
        A store folded from another cluster (the broker's data was formatted anew), or ahead of
        the log's end (a topic recreated), is emptied and folded again from offset 0."""
        fingerprint = f"schema {SCHEMA_VERSION}; cluster {await cluster_id(self.settings.bootstrap_servers)}"
        if await self.store.open(fingerprint):
            log.warning(
                "read model %s was folded from another cluster: rebuilt from offset 0",
                self.store.url_for_humans,
            )
        ends = await log_ends(self.settings.bootstrap_servers, self.status_reader.topics)
        ahead = sorted(
            tp for tp, offset in (await self.store.positions()).items() if offset > ends.get(tp, 0)
        )
        if ahead:
            log.warning(
                "read model %s is ahead of the log (%s): the topics were recreated; rebuilding from offset 0",
                self.store.url_for_humans,
                ", ".join(f"{t}[{p}]" for t, p in ahead),
            )
            await self.store.reset()
        positions = await self.views.load()
        replaced = self.status_reader
        self.status_reader = self._status_reader(positions)
        self.readers[self.readers.index(replaced)] = self.status_reader
        log.info(
            "read model %s: %d live runs in memory, reading on from %d stored positions",
            self.store.url_for_humans,
            len(self.status.executions) + len(self.status.accepted),
            len(positions),
        )

    def _on_control(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.executor.cancel(self.codec.decode(record.value, ControlMessage))

    async def _view_error(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        log.error("view could not apply %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    def active_readers(self) -> list[LogReader]:
        """The views this process's roles read: all with ``views``; an executor alone reads the
        workers (how many share a rate limit) and the circuits (shared breakers)."""
        readers = list(self.readers) if "views" in self.roles else []
        if "executor" in self.roles:
            readers += [r for r in (self.workers_reader, self.circuits_reader) if r not in readers]
        return readers

    async def sync_views(self, within: float) -> bool:
        """Catch every view up with what the log held when this was called (read-your-writes)."""
        return all(await asyncio.gather(*(r.sync(within) for r in self.active_readers())))

    def _brokers_listed(self, count: int) -> None:
        self.brokers_listed = count
        self.metrics.brokers.set(count)

    def readiness(self) -> Mapping[str, bool]:
        readers = self.active_readers()
        checks = {
            # none listed (none answers): the clients would wait it out, and a start would get a
            # 503 after seconds; a balancer should send callers elsewhere now
            "broker_connected": self.brokers_listed != 0,
            "views_caught_up": all(r.caught_up.is_set() and not r.failed for r in readers),
        }
        if "api" in self.roles:
            # at the overdue limit every start and command is refused unsent (ADR 0054): the broker
            # may be listed again while the client still holds those sends
            checks["sends_accepted"] = not self.publisher.overdue.full
        if "views" in self.roles:
            checks["read_model_store"] = self.views.store_healthy
        if "orchestrator" in self.roles:
            checks["orchestrator_ready"] = self.orchestrator.ready()
        if "executor" in self.roles:
            checks["executor_started"] = self._executor_started
        return checks

    def _pool_figures(self, figures: Mapping[str, PoolFigures]) -> None:
        for pool, f in figures.items():
            self.metrics.pool_backlog.labels(pool).set(f.backlog)
            self.metrics.pool_desired_workers.labels(pool).set(f.desired_workers)

    async def expire_finished(self) -> None:
        """Every ``retention_check_seconds``, delete the runs that ended more than
        ``retention_days`` ago from the read model (the log keeps them as long as its own
        retention says; see topics/topics.toml)."""
        keep = timedelta(days=self.settings.retention_days)
        while True:
            try:
                deleted = await self.views.expire(now(), keep)
            except Exception:
                log.exception("read-model retention failed; trying again at the next check")
            else:
                if deleted:
                    self.metrics.view_expired.inc(deleted)
                    log.info(
                        "read model: %d runs past their %g days deleted",
                        deleted,
                        self.settings.retention_days,
                    )
            await asyncio.sleep(self.settings.retention_check_seconds)

    async def write_rows_behind(self) -> None:
        """Write the read model's rows that have been behind memory for the row delay (ADR 0063):
        a live run no batch touches (it waits for a timer, a signal or a slot) is written too."""
        while True:
            await asyncio.sleep(max(self.settings.views_row_delay_seconds / 2, 0.05))
            await self.views.flush(every=False)

    def _start_limit(self) -> TeamStartLimiter | None:
        """Each team's start rate limit, when ``LINKFLOW_TEAM_STARTS_PER_SECOND`` sets one."""
        s = self.settings
        if s.team_starts_per_second is None:
            return None
        return TeamStartLimiter(
            s.team_starts_per_second, s.team_starts_burst, on_refused=self.metrics.team_starts_throttled.inc
        )

    def live_executors(self, pool: str) -> int:
        """Engine processes with the executor role serving ``pool`` alive in the worker registry
        (at least this one): the executors that share a node rate limit of that pool (ADR 0031,
        0028). Every executor process folds ``linkflow.workers`` for it, views or not."""
        at = now()
        alive = [
            w
            for w in self.workers.workers.values()
            if w.engine
            and (not w.roles or "executor" in w.roles)  # ADR 0028: the processes that execute
            and pool in (w.pool_slots or w.tags)  # ... the node's pool
            and w.state is WorkerState.ACTIVE
            and w.alive(at)
        ]
        return max(1, len(alive))

    # -- this process as a worker ---------------------------------------------------------------
    def self_record(self, registered_at: datetime) -> WorkerRecord:
        """This process as a worker: its roles, its pools and their slots, what it runs now."""
        executes = "executor" in self.roles
        slots = self.executor.slots if executes else {}
        return WorkerRecord(
            id=self.executor.worker_id,
            capacity=sum(slots.values()),
            tags=tuple(slots),
            running=len(self.executor.running),
            registered_at=registered_at,
            heartbeat_at=now(),
            engine=True,
            roles=tuple(r for r in ROLES if r in self.roles),
            heartbeat_seconds=self.settings.heartbeat_seconds,
            pool_slots=slots,
            pool_running=dict(self.executor.in_use) if executes else {},
            pool_task_seconds=dict(self.executor.task_seconds) if executes else {},
        )

    async def heartbeat(self) -> None:
        """Register this process, then tell the registry it is alive every few seconds."""
        registered_at = now()
        while True:
            record = self.self_record(registered_at)
            try:
                await self.publisher.send(
                    [
                        Outgoing(
                            topic_names.WORKERS,
                            record.id,
                            record,
                            "io.linkflow.worker.heartbeat",
                            time=record.heartbeat_at,
                        )
                    ]
                )
            except Exception:
                log.exception("worker heartbeat failed; the next one will tell")
            await self._forget_workers()
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _forget_workers(self) -> None:
        """Tombstone the workers not heard from for ``FORGET_AFTER`` (any engine may: a tombstone
        written twice is one), so compaction removes them from the topic and every view forgets
        them."""
        for worker_id in self.workers.forgotten(now()):
            try:
                await self.publisher.send_raw(topic_names.WORKERS, worker_id.encode(), None, [])
            except Exception:
                log.exception("tombstoning worker %s failed; the next heartbeat tries again", worker_id)
                return
            self.workers.remove(worker_id)
            log.info("worker %s not heard from for %s: forgotten", worker_id, FORGET_AFTER)

    async def self_checks(self) -> None:
        """Let node types that need something of the machine check it once and log what is
        missing and how to fix it (the code node: its bubblewrap sandbox), so that an operator
        reads it at start rather than on a failed run. Runs in the background: readiness does
        not wait for it, and a node that runs meanwhile waits for the same probe."""
        for node in self.registry.values():
            check = getattr(node, "self_check", None)
            if check is None:
                continue
            try:
                await check()
            except Exception:
                log.exception("start-up check of %s nodes failed", node.type_name)

    # -- lifecycle ------------------------------------------------------------------------------
    async def _serve(self, app: web.Application, port: int, name: str) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(
            runner, self.settings.api_host, port, backlog=self.settings.api_listen_backlog
        ).start()
        self._runners.append(runner)
        log.info("%s listening on %s:%d", name, self.settings.api_host, port)

    async def start(self) -> None:
        """Publisher and APIs first (so /healthz answers at once), then views, then the loops; each
        part only where this process's roles name it (``linkflow run --roles``, ADR 0028)."""
        self._uncount_retries()  # started again: counted once
        self._uncount_retries = count_routine_retries(self._produce_retried)
        try:
            await self._start()
        except BaseException:
            self._uncount_retries()
            raise

    async def _start(self) -> None:
        roles = self.roles
        await self._register_schemas()
        if "api" in roles:
            await self._check_auth()
        if "executor" in roles:
            self._background.append(asyncio.create_task(self.self_checks(), name="node-self-checks"))
        await self.publisher.start()
        if "views" in roles:
            await self._open_read_model()
        for reader in self.active_readers():
            if reader is not self.key_reader or "api" not in roles:  # else started by _check_auth
                await reader.start()
        if "executor" in roles:
            await self.control.start()
        if "api" in roles:
            await self._serve_apis()
        else:
            await self._serve(ops_app(self.readiness, self.metrics.render), self.settings.api_port, "ops")
        self._background.append(asyncio.create_task(self.heartbeat(), name="worker-heartbeat"))
        if "views" in roles:
            self._background.append(asyncio.create_task(self.expire_finished(), name="read-model-retention"))
            if self.settings.views_row_delay_seconds > 0:
                rows = self.write_rows_behind()
                self._background.append(asyncio.create_task(rows, name="read-model-rows"))
            self._background.append(asyncio.create_task(self.pool_watch.run(), name="pool-watch"))
        lag = watch_loop(self.metrics.loop_lag.observe)
        self._background.append(asyncio.create_task(lag, name="loop-lag"))
        watch = BrokerWatch(self.settings.bootstrap_servers, self._brokers_listed)
        self._background.append(asyncio.create_task(watch.run(), name="broker-watch"))
        if "orchestrator" in roles:
            await self.orchestrator.start()
            await self.gate.start()
        if "api" in roles:
            await self.intake.start()
            await self.signal_intake.start()
            await self.scheduler.start()
        if "executor" in roles:
            await self.tasks.start()
            self._executor_started = True
        await asyncio.gather(*(r.caught_up.wait() for r in self.active_readers()))
        gc_tuning.freeze_start_up()
        self._gc_watch = gc_tuning.observe_pauses(self._gc_paused)
        log.info(
            "engine started: roles %s, pools %s, event loop %s",
            ",".join(r for r in ROLES if r in roles),
            ",".join(self.settings.executor_pools),
            event_loop.loop_name(asyncio.get_running_loop()),
        )

    async def _serve_apis(self) -> None:
        """The execution API and the worker registry (the ``api`` role)."""
        keys = self.keys if self.auth_required else None
        deps = ApiDeps(
            publisher=self.publisher,
            views=self.views,
            workflows=self.workflows,
            registry=self.registry,
            readiness=self.readiness,
            metrics=self.metrics.render,
            sync=self.sync_views,
            queue_status=lambda: queue_status(self.settings, self.status, self.status_reader),
            pools=self.pools.names,
            keys=self.keys,
            schedules=self.schedules,
            circuits=self.breakers.listing,
            auth=authentication(keys, self.key_reader.sync, Api.ADMIN_ROUTES),
            tracing=self.tracing,
            start_limit=self._start_limit(),
            admission=self.admission,
            on_admission_rejected=lambda team: self.metrics.admission_rejected.labels("http", team).inc(),
            workers=lambda: self.workers.status(now()),
            events=lambda execution_id, created_at: execution_events(
                self.settings.bootstrap_servers,
                self.settings.topic(topic_names.EVENTS),
                execution_id,
                self.codec,
                created_at=created_at,
            ),
        )
        await self._serve(Api(deps).app(), self.settings.api_port, "execution API")
        registry_auth = authentication(keys, self.key_reader.sync, RegistryApi.ADMIN_ROUTES)
        await self._serve(
            RegistryApi(self.publisher, self.workers, self.sync_views, registry_auth).app(),
            self.settings.registry_port,
            "worker registry",
        )

    async def stop(self) -> None:
        """The reverse: stop taking work, let what runs finish its batch, then close."""
        gc_tuning.stop_observing(self._gc_watch)
        for task in self._background:
            task.cancel()
        for runner in self._runners:
            await runner.cleanup()
        roles = self.roles
        if "executor" in roles:
            await self.tasks.stop()
        if "api" in roles:
            await self.scheduler.stop()
            await self.signal_intake.stop()
            await self.intake.stop()
        if "orchestrator" in roles:
            await self.gate.stop()
            await self.orchestrator.stop()
        for reader in [*self.active_readers(), *((self.control,) if "executor" in roles else ())]:
            await reader.stop()
        if "views" in roles:
            await self.views.flush(within=STOP_FLUSH_SECONDS)  # else the restart folds them again
            await self.views.close()  # a write the store did not take in time: folded again
            await self.store.close()
        await asyncio.gather(*self.executor.running.values(), return_exceptions=True)
        for node in self.registry.values():
            close = getattr(node, "close", None)
            if close is not None:
                await close()
        await self.publisher.stop()
        if self.tracing is not None:
            # Exports what is buffered: blocking (the exporter's own timeout bounds it), so in a
            # thread, where the stop's deadline and a second signal can still cut it short.
            await asyncio.to_thread(self.tracing.shutdown)
        await self.codec.close()
        self._uncount_retries()  # last: the producers' final flushes are counted too
        log.info("engine stopped")


async def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM, then stop in order; the process's exit code (2: refused)."""
    problem = placement_problem(settings)
    if problem is not None:
        log.error("not starting: %s", problem)
        return 2
    try:
        engine = Engine(settings)
    except TracingConfigError as exc:
        log.error("not starting: %s", exc.message)  # noqa: TRY400 - the message says it all
        return 2
    signals = _Signals()
    starting = asyncio.create_task(engine.start(), name="engine-start")
    stopping = asyncio.create_task(signals.first.wait(), name="engine-stop-signal")
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        try:
            starting.result()  # a failed start ends the process with its error
        except StartRefusedError as exc:
            log.error("not starting: %s", exc.message)  # noqa: TRY400 - the message says it all
            return 2
        await stopping
    log.info("stopping")
    return await _stop_within(_stopped(engine, starting), settings.stop_timeout_seconds, signals.second)


async def _stopped(engine: Engine, starting: asyncio.Task[None]) -> None:
    """The start cut short if it still runs (a signal during the start), then the stop."""
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    await engine.stop()


class _Signals:
    """SIGINT and SIGTERM, counted by one handler for the whole process: the first asks for the
    stop, the second abandons it. (Counted, not a handler replaced at the stop's start: a second
    signal during a start being cut short, or two in one turn of the loop, would reach the first
    handler and be lost.)"""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        (self.second if self.first.is_set() else self.first).set()


async def _stop_within(stop: Awaitable[None], seconds: float, again: asyncio.Event) -> int:
    """Run ``stop``; 0 once done, or ``STOP_OVERDUE`` when it has not finished after ``seconds``
    or ``again`` is set first (a second SIGINT or SIGTERM: Ctrl-C twice). A stop waits for the
    broker (the last batch's commit, the producers' flush, leaving the group), and with the broker
    away it waited for ever: an engine told to stop must end, and ending without the rest of the
    stop is what a crash does, which the engine is built to survive (what was not committed is
    read again by the partitions' next owner)."""
    stopping = asyncio.ensure_future(stop)
    signalled = asyncio.create_task(again.wait(), name="engine-stop-again")
    done, _ = await asyncio.wait({stopping, signalled}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    if stopping in done:
        signalled.cancel()
        stopping.result()  # a stop that failed ends the process with its error
        return 0
    why = "a second signal came" if signalled in done else f"it did not finish within {seconds:g} s"
    log.error(
        "stop abandoned (%s): exiting now, as a crash would; what was not committed is read again "
        "by the next owner of its partitions",
        why,
    )
    return STOP_OVERDUE


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the engine in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "aiohttp"):  # only our own logs follow --loglevel
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    condense_connection_errors()  # a broker away: a line per kind and half-minute, not 1,000 a second
    gc_tuning.tune()
    protocol_decoders.install()  # Kafka responses read by compiled readers (ADR 0067)
    protocol_encoders.install()  # and requests written by compiled writers (ADR 0069)
    runner = asyncio.Runner(loop_factory=event_loop.loop_factory(settings.event_loop))
    try:
        code = runner.run(serve(settings))
    except BaseException:
        runner.close()
        raise
    if code == STOP_OVERDUE:
        # The loop is left as it is: its close would cancel the stuck stop and wait for it. Its
        # tasks stay referenced, so no collection runs their cleanup while the caller finishes.
        raise StopAbandonedError(asyncio.all_tasks(runner.get_loop()))
    runner.close()
    if code:
        raise SystemExit(code)


class StopAbandonedError(Exception):
    """The engine's stop was abandoned (``_stop_within``). The caller ends the process with
    ``exit_abandoned`` once it has done its own part (``linkflow dev`` stops its broker)."""

    def __init__(self, pending: set[asyncio.Task[Any]]) -> None:
        super().__init__("the engine's stop was abandoned")
        self.pending = pending
        """The abandoned loop's tasks, held until the process ends."""


def exit_abandoned() -> NoReturn:
    """End the process now with ``STOP_OVERDUE``: not through the interpreter's exit, which
    joins the worker threads (a stuck store write, a runaway expression) and would wait for what
    the stop was abandoned for."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(STOP_OVERDUE)
