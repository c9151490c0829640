"""The composition root: builds the orchestrator, the executor, the views and the HTTP APIs of
one ``linkflow run`` process and starts and stops them in order. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Mapping
from datetime import datetime

from aiohttp import web
from aiokafka import ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import ControlMessage, StartExecution
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.queue_status import queue_status
from linkflow_stream.http.registry import RegistryApi
from linkflow_stream.kafka.codec import Codec, default_codec
from linkflow_stream.kafka.log_reader import Handler, LogReader
from linkflow_stream.kafka.pools import TaskPools
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime import gc_tuning
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.orchestrator import Orchestrator
from linkflow_stream.runtime.step import Stepper
from linkflow_stream.runtime.task_consumer import TaskConsumer
from linkflow_stream.settings import Settings
from projections.logs import LogView
from projections.status import StatusView
from projections.workers import HEARTBEAT_SECONDS, WorkerRecord, WorkerView
from projections.workflows import WorkflowView

log = logging.getLogger(__name__)


class Engine:
    """Everything one ``linkflow run`` process holds."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or default_codec()
        self.registry = build_registry(settings)
        self.publisher = Publisher(settings, self.codec)
        self.status = StatusView()
        self.metrics = Metrics(
            active=self.status.active_count,
            queue_depth=lambda: {p: c["queued"] for p, c in self.status.queue_counts().items()},
        )
        self.pools = TaskPools(settings)
        stepper = Stepper(
            self.registry,
            decider_config(self.registry, settings),
            pool_exists=self.pools.exists,
            output_max_bytes=settings.node_output_max_bytes,
        )
        self.orchestrator = Orchestrator(settings, self.codec, stepper, self.metrics)
        self.executor = Executor(
            self.registry, self.publisher, settings.executor_slots, settings.node_output_max_bytes
        )
        self.tasks = TaskConsumer(
            settings,
            self.codec,
            self.executor,
            self.publisher,
            on_dead_letter=lambda topic: self.metrics.dlq.labels(topic).inc(),
        )
        self.workflows = WorkflowView()
        self.workers = WorkerView()
        self.logs = LogView()
        settings.data_dir.mkdir(parents=True, exist_ok=True)

        def view(topics: list[str], handle: Handler) -> LogReader:
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
        self._runners: list[web.AppRunner] = []
        self._background: list[asyncio.Task[None]] = []

    # -- views --------------------------------------------------------------------------------
    def _on_workflow(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.workflows.apply(self.codec.decode(record.value, WorkflowDefinition))

    def _on_worker(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.workers.apply(self.codec.decode(record.value, WorkerRecord))

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

    def _on_control(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.executor.cancel(self.codec.decode(record.value, ControlMessage))

    async def _view_error(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        log.error("view could not apply %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    async def sync_views(self, within: float) -> bool:
        """Catch every view up with what the log held when this was called (read-your-writes)."""
        return all(await asyncio.gather(*(r.sync(within) for r in self.readers)))

    def readiness(self) -> Mapping[str, bool]:
        return {
            "views_caught_up": all(r.caught_up.is_set() for r in self.readers),
            "orchestrator_ready": self.orchestrator.ready(),
        }

    # -- this process as a worker ---------------------------------------------------------------
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

    # -- lifecycle ------------------------------------------------------------------------------
    async def _serve(self, app: web.Application, port: int, name: str) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.api_host, port).start()
        self._runners.append(runner)
        log.info("%s listening on %s:%d", name, self.settings.api_host, port)

    async def start(self) -> None:
        """Publisher and APIs first (so /healthz answers at once), then views, then the loops."""
        await self.publisher.start()
        for reader in (*self.readers, self.control):
            await reader.start()
        deps = ApiDeps(
            publisher=self.publisher,
            status=self.status,
            workflows=self.workflows,
            registry=self.registry,
            readiness=self.readiness,
            metrics=self.metrics.render,
            sync=self.sync_views,
            queue_status=lambda: queue_status(self.settings, self.status, self.status_reader),
            logs=self.logs,
            pools=self.pools.names,
        )
        await self._serve(Api(deps).app(), self.settings.api_port, "execution API")
        await self._serve(
            RegistryApi(self.publisher, self.workers, self.sync_views).app(),
            self.settings.registry_port,
            "worker registry",
        )
        self._background.append(asyncio.create_task(self.heartbeat(), name="worker-heartbeat"))
        await self.orchestrator.start()
        await self.tasks.start()
        await asyncio.gather(*(r.caught_up.wait() for r in self.readers))
        gc.freeze()  # the replayed views are long-lived: keep them out of the collector's scans
        self._background.append(asyncio.create_task(gc_tuning.freeze_survivors(), name="gc-freeze"))
        log.info("engine started")

    async def stop(self) -> None:
        """The reverse: stop taking work, let what runs finish its batch, then close."""
        for task in self._background:
            task.cancel()
        for runner in self._runners:
            await runner.cleanup()
        await self.tasks.stop()
        await self.orchestrator.stop()
        for reader in (*self.readers, self.control):
            await reader.stop()
        await asyncio.gather(*self.executor.running.values(), return_exceptions=True)
        for node in self.registry.values():
            close = getattr(node, "close", None)
            if close is not None:
                await close()
        await self.publisher.stop()
        log.info("engine stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop in order."""
    engine = Engine(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(engine.start(), name="engine-start")
    stopping = asyncio.create_task(stop.wait(), name="engine-stop-signal")
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        starting.result()  # a failed start ends the process with its error
        await stopping
    else:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    log.info("stopping")
    await engine.stop()


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the engine in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "aiohttp"):  # only our own logs follow --loglevel
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    gc_tuning.tune()
    asyncio.run(serve(settings))
