"""The composition root: one Faust app with the orchestrator and executor agents, plus the
services around it (publisher, views, timers, HTTP API)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import faust
import mode
from aiohttp import web
from aiokafka import ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis, now, seconds_to_millis
from linkflow_stream.core.decider import Input
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import (
    ControlMessage,
    ExecutionCommand,
    NodeResult,
    NodeTask,
    StartExecution,
)
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.queue_status import queue_status
from linkflow_stream.http.registry import RegistryApi
from linkflow_stream.kafka.codec import Codec, DecodeError, default_codec
from linkflow_stream.kafka.dlq import dead_letter
from linkflow_stream.kafka.log_reader import LogReader
from linkflow_stream.kafka.partitioning import ExecutionTable
from linkflow_stream.kafka.publisher import Outgoing, Publisher
from linkflow_stream.kafka.topics import execution_partitions, max_message_bytes
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.request_watchdog import RequestWatchdog
from linkflow_stream.runtime import gc_tuning
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.step import Orchestrator
from linkflow_stream.runtime.timers import TimerService
from linkflow_stream.settings import Settings
from projections.logs import LogView
from projections.status import StatusView
from projections.workers import HEARTBEAT_SECONDS, WorkerRecord, WorkerView
from projections.workflows import WorkflowView

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class Engine:
    """Everything one ``linkflow run`` process holds."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or default_codec()
        self.registry = build_registry(settings)
        self.orchestrator = Orchestrator(self.registry, decider_config(self.registry, settings))
        self.publisher = Publisher(settings, self.codec)
        self.timers = TimerService(self.publisher)
        self.executor = Executor(
            self.registry, self.publisher, settings.executor_slots, settings.node_output_max_bytes
        )
        self.status = StatusView()
        self.metrics = Metrics(
            active=self.status.active_count,
            counts=self._counts,
            queue_depth=lambda: {p: c["queued"] for p, c in self.status.queue_counts().items()},
        )
        self.workflows = WorkflowView()
        self.workers = WorkerView()
        self.logs = LogView()
        self.watchdog = RequestWatchdog(
            self.status, self.publisher, ready=lambda: all(r.caught_up.is_set() for r in self.readers)
        )
        self.recovered = False
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = self._build_app()

        def view(topics: list[str], handle: Any) -> LogReader:
            return LogReader(
                settings.bootstrap_servers,
                [settings.topic(t) for t in topics],
                handle,
                on_error=self._view_error,
            )

        self.status_reader = view([topic_names.EVENTS, *topic_names.REQUESTS], self._on_status_record)
        self.readers = [
            view([topic_names.WORKFLOWS], self._on_workflow),
            self.status_reader,
            view([topic_names.WORKERS], self._on_worker),
        ]
        self.control = LogReader(
            settings.bootstrap_servers,
            [settings.topic(topic_names.CONTROL)],
            self._on_control,
            from_beginning=False,
        )

    # -- Faust wiring -------------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        partitions = execution_partitions()
        app = faust.App(
            s.app_id,
            broker=f"kafka://{s.bootstrap_servers}",
            store="memory://",
            topic_partitions=partitions,
            topic_allow_declare=False,
            topic_disable_leader=True,
            web_enabled=False,
            broker_session_timeout=s.session_timeout_seconds,
            broker_heartbeat_interval=min(3.0, s.session_timeout_seconds / 3),
            broker_commit_interval=s.commit_interval_seconds,
            consumer_auto_offset_reset="earliest",
            datadir=str(s.data_dir / "faust"),
            producer_acks=-1,
            producer_linger=0.001,
            stream_wait_empty=False,
            producer_max_request_size=max_message_bytes(),
        )
        inputs = app.topic(
            *(s.topic(t) for t in (*topic_names.REQUESTS, topic_names.COMMANDS, topic_names.RESULTS)), **RAW
        )
        changelog = app.topic(s.topic(topic_names.STATE), partitions=partitions, **RAW)
        # A state's changelog partition is its key's partition (see partitioning.py), so a batch
        # spanning partitions stores each state where recovery will look for it.
        self.table = ExecutionTable(
            app,
            name="executions",
            default=None,
            partitions=partitions,
            beacon=app.tables.beacon,
            changelog_topic=changelog,
            key_type=bytes,
            value_type=bytes,
            # After every recovery (start-up and each rebalance), the heap learns the timers of
            # the states this instance now owns: a taken-over wait must still fire.
            on_recover=self._load_timers,
        )
        app.tables.add(self.table)
        tasks = app.topic(*(s.topic(topic_names.tasks(p)) for p in s.executor_pools), **RAW)

        async def orchestrate(stream: Any) -> None:
            # Faust acks a batch only after this body has handled it: at-least-once holds.
            async for batch in stream.take_events(
                s.orchestrator_batch_max, within=s.orchestrator_batch_wait_seconds
            ):
                await self.on_inputs([event.message for event in batch])

        async def execute(stream: Any) -> None:
            async for event in stream.events():
                await self.on_task(event.message)

        app.agent(inputs, name="orchestrator", concurrency=1)(orchestrate)
        app.agent(tasks, name="executor", concurrency=1)(execute)
        app.task(self._run_timers)
        return app

    def _decode_input(self, topic: str, key: bytes | None, value: bytes | None) -> Input:
        """The input in a record, which must be keyed by its execution id (its partition's owner)."""
        logical = topic.removeprefix(self.settings.topic_prefix)
        model: type[Input]
        if logical in topic_names.REQUESTS:
            model = StartExecution
        elif logical == topic_names.COMMANDS:
            model = ExecutionCommand
        else:
            model = NodeResult
        inp = self.codec.decode(value, model)
        if key != inp.execution_id.encode():
            raise DecodeError(f"record key {key!r} is not its execution id {inp.execution_id!r}")
        return inp

    async def on_inputs(self, messages: list[Any]) -> None:
        """A batch of orchestrator inputs: decide each in order, publish all the outputs and wait
        for their acknowledgement once, and only then store the new states. A state is never
        ahead of the event log; a crash before the store re-processes the inputs, which re-emits
        the same events (same seq), and consumers drop them."""
        states: dict[bytes, ExecutionState | None] = {}
        outputs: list[Outgoing] = []
        observed: list[tuple[ExecutionState, list[ExecutionEvent]]] = []
        for msg in messages:
            try:
                inp = self._decode_input(msg.topic, msg.key, msg.value)
                if msg.key not in states:
                    raw = self.table.get(msg.key)
                    states[msg.key] = self.codec.decode(raw, ExecutionState) if raw is not None else None
                step = await self.orchestrator.step(
                    states[msg.key], inp, from_millis(seconds_to_millis(msg.timestamp))
                )
            except Exception as exc:  # noqa: BLE001 - a poison input goes to the DLQ; the agent goes on
                await self._dead_letter(msg, f"{type(exc).__name__}: {exc}")
                continue
            self.metrics.inputs.labels(type(inp).__name__).inc()
            self.metrics.input_lag.observe(max(0.0, time.time() - msg.timestamp))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "input %s %s: state %s -> %d events",
                    type(inp).__name__,
                    inp.execution_id,
                    "present" if states[msg.key] is not None else "absent",
                    len(step.events),
                )
            if step.changed and step.state is not None:
                states[msg.key] = step.state
                outputs.extend(step.outputs)
                observed.append((step.state, step.events))
        if not observed:
            return
        await self._publish_until_acknowledged(outputs)
        for key in {state.id.encode() for state, _ in observed}:
            state = states[key]
            assert state is not None
            self.table[key] = self.codec.encode(state)
            self.timers.track(state)
        for state, events in observed:
            self.metrics.observe(state, events)

    async def _publish_until_acknowledged(self, outputs: list[Outgoing]) -> None:
        """Retry while the broker is away: crashing here would restart the agent past this batch,
        and Faust would not deliver its inputs again."""
        delay = 0.1
        while True:
            try:
                await self.publisher.send(outputs)
            except Exception:
                log.exception("publishing %d records failed; retrying in %.1fs", len(outputs), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return

    async def on_task(self, msg: Any) -> None:
        try:
            task = self.codec.decode(msg.value, NodeTask)
        except DecodeError as exc:
            await self._dead_letter(msg, str(exc))
            return
        await self.executor.submit(task)

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        await dead_letter(
            self.publisher,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value,
            reason=reason,
        )
        self.metrics.dlq.labels(msg.topic.removeprefix(self.settings.topic_prefix)).inc()

    async def _load_timers(self) -> None:
        states = [self.codec.decode(v, ExecutionState) for _, v in self.table.items() if v is not None]
        self.timers.rebuild(states)
        log.info("timer service: loaded the timers of %d stored executions", len(states))

    async def _run_timers(self) -> None:
        """Started by Faust once the first recovery is done (its ``on_recover`` has loaded the
        timers by then); fires timers when due."""
        self.recovered = True
        await self.timers.run()

    # -- views --------------------------------------------------------------------------------
    def _on_workflow(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.workflows.apply(self.codec.decode(record.value, WorkflowDefinition))

    def _on_worker(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.workers.apply(self.codec.decode(record.value, WorkerRecord))

    def self_record(self, registered_at: datetime) -> WorkerRecord:
        """This process as a worker: its executor slots, its pools, what it runs now."""
        return WorkerRecord(
            id=self.executor.worker_id,
            capacity=self.settings.executor_slots,
            tags=self.settings.executor_pools,
            running=len(self.executor.running),
            registered_at=registered_at,
            heartbeat_at=now(),
            engine=True,
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
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _on_status_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Events fold into states; requests are known as accepted until their events arrive."""
        if record.topic == self.settings.topic(topic_names.EVENTS):
            event = self.codec.decode(record.value, ExecutionEvent)
            before = self.status.executions.get(event.execution_id)
            after = self.status.apply(event)
            if after is not None and after is not before:
                self.logs.record(event, after)
            self.metrics.view_lag.observe(max(0.0, time.time() - record.timestamp / 1000))
        else:
            self.status.accept(self.codec.decode(record.value, StartExecution))

    async def sync_views(self, within: float) -> bool:
        """Catch every view up with what the log held when this was called (read-your-writes)."""
        return all(await asyncio.gather(*(r.sync(within) for r in self.readers)))

    def _on_control(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.executor.cancel(self.codec.decode(record.value, ControlMessage))

    async def _view_error(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        log.error("view could not apply %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    def _counts(self) -> dict[str, tuple[str, float]]:
        return {
            "linkflow_timers_fired": ("Timer commands sent", self.timers.fired_total),
            "linkflow_timers_refired": (
                "Timers fired again because they were still pending (ADR 0009)",
                self.timers.refired_total,
            ),
            "linkflow_requests_resent": (
                "Start requests and cancels published again by the watchdog (ADR 0009)",
                self.watchdog.resent_total,
            ),
        }

    def readiness(self) -> Mapping[str, bool]:
        return {
            "views_caught_up": all(r.caught_up.is_set() for r in self.readers),
            "partitions_assigned": self.recovered and not self.app.rebalancing,
        }


class EngineServices(mode.Service):
    """Publisher, views and the HTTP APIs: started before the Faust app so /healthz answers at once."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self._runners: list[web.AppRunner] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def _serve(self, app: web.Application, port: int, name: str) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.engine.settings.api_host, port).start()
        self._runners.append(runner)
        log.info("%s listening on %s:%d", name, self.engine.settings.api_host, port)

    async def on_start(self) -> None:
        e = self.engine
        for noisy in ("faust", "mode", "aiokafka", "aiohttp"):  # only our own logs follow --loglevel
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
        await e.publisher.start()
        for reader in (*e.readers, e.control):
            await reader.start()
        deps = ApiDeps(
            publisher=e.publisher,
            status=e.status,
            workflows=e.workflows,
            registry=e.registry,
            readiness=e.readiness,
            metrics=e.metrics.render,
            sync=e.sync_views,
            queue_status=lambda: queue_status(e.settings, e.status, e.status_reader),
            logs=e.logs,
            on_cancel=e.watchdog.watch_cancel,
        )
        await self._serve(Api(deps).app(), e.settings.api_port, "execution API")
        await self._serve(
            RegistryApi(e.publisher, e.workers, e.sync_views).app(),
            e.settings.registry_port,
            "worker registry",
        )
        self._heartbeat = asyncio.create_task(e.heartbeat(), name="worker-heartbeat")
        await asyncio.gather(*(r.caught_up.wait() for r in e.readers))
        gc.freeze()  # the replayed views are long-lived: keep them out of the collector's scans
        self._freezer = asyncio.create_task(gc_tuning.freeze_survivors(), name="gc-freeze")
        self._watchdog = asyncio.create_task(e.watchdog.run(), name="request-watchdog")

    async def on_stop(self) -> None:
        e = self.engine
        for task in (self._heartbeat, self._freezer, self._watchdog):
            if task is not None:
                task.cancel()
        for runner in self._runners:
            await runner.cleanup()
        for reader in (*e.readers, e.control):
            await reader.stop()
        await asyncio.gather(*e.executor.running.values(), return_exceptions=True)
        for node in e.registry.values():
            close = getattr(node, "close", None)
            if close is not None:
                await close()
        await e.publisher.stop()


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the engine in the foreground until SIGINT/SIGTERM."""
    gc_tuning.tune()
    engine = Engine(settings)
    worker = faust.Worker(engine.app, EngineServices(engine), loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
