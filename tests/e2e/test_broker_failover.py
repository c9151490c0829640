"""Losing one broker of three while runs are in flight: kill -9 of the broker that leads the most
partitions of the events and request topics, while every run waits on its timer. Every run then
finishes exactly once with the right output (exactly_once.py), no input offset is skipped
(checked when the engine stops), the engine's broker gauge falls from 3 to 2, and its readiness
probe answers throughout and is 200 once the failover is over."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from linkflow_stream.core import topic_names
from linkflow_stream.dev.cluster import Cluster
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call
from linkflow_stream.kafka.topics import apply_topics, load_specs
from linkflow_stream.settings import Settings
from tests.e2e.exactly_once import assert_exactly_once
from tests.integration.brokers import broker_pids, start_cluster

pytestmark = pytest.mark.e2e
RUNS = 40
WAIT_SECONDS = 14.0
"""Each run waits this long first: time to start them all and see them running, also on a slow
machine (it takes about 6 s here; at 8 s a loaded CI machine had 1.5 s to spare)."""
KILL_BEFORE_DUE_SECONDS = 1.5
"""The kill comes this long before the first wait is due: the timers then fire, and their
transactions, tasks and results go to the dead broker's partitions, before the controller fences
it (3 s after the kill) and moves its leaderships."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = start_cluster(tmp_path / "kafka")
    yield started
    started.stop()
    for node in started.nodes:
        assert broker_pids(node) == [], f"node {node.node_id} left running"


async def leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    """How many partitions of ``topics`` each broker (node id) leads now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return Counter(p["leader"] for t in described for p in t["partitions"])


class ReadinessProbe:
    """Polls ``/readyz`` in a thread, as a load balancer would, and keeps every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(call("GET", f"{self.url}/readyz", timeout=5)[0])
            except OSError as exc:
                self.answers.append(repr(exc))
            self._stop.wait(0.2)


def wait_for_metric(engine: EngineProcess, name: str, value: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    seen = engine.metric_total(name)
    while seen != value and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = engine.metric_total(name)
    return seen


def test_killing_the_busiest_broker_mid_run_loses_and_duplicates_nothing(
    cluster: Cluster, tmp_path: Path, target: TargetServer
) -> None:
    began = time.monotonic()
    engine = EngineProcess(bootstrap=cluster.bootstrap, workdir=tmp_path)
    created = asyncio.run(
        apply_topics(
            Settings(bootstrap_servers=cluster.bootstrap, topic_prefix=engine.prefix, topics_env="cluster")
        )
    )
    assert len(created) == len(load_specs()), created
    assert [line for line in created if "replication factor 3" not in line] == []
    engine.start()  # its own apply (environment derived from the three brokers) finds nothing to do
    try:
        assert wait_for_metric(engine, "linkflow_kafka_brokers", 3, 10) == 3
        wf_id = f"failover-{uuid.uuid4().hex[:8]}"
        engine.register(
            {
                "id": wf_id,
                "nodes": [
                    {"id": "w", "type": "wait", "config": {"seconds": WAIT_SECONDS}},
                    {
                        "id": "h",
                        "type": "http",
                        "depends_on": ["w"],
                        "timeout_seconds": 10,
                        "retry": {"max_attempts": 5, "initial_delay_seconds": 0.5},
                        "config": {
                            "method": "POST",
                            "url": f"{target.url}/failover/{wf_id}",
                            "json": {"x": 1},
                        },
                    },
                    {
                        "id": "t",
                        "type": "transform",
                        "depends_on": ["h"],
                        "config": {"expression": "input.i * 7"},
                    },
                ],
            }
        )
        first_start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:  # all started within a moment of each other
            answers = list(pool.map(lambda i: engine.start_execution(wf_id, {"i": i}), range(RUNS)))
        assert all(status == 202 for status, _ in answers), answers
        ids = [body["id"] for _, body in answers]
        running = [engine.wait_status(e, ("running",), timeout=WAIT_SECONDS / 2) for e in ids]
        first_due = min(datetime.fromisoformat(r["nodes"]["w"]["started_at"]) for r in running) + timedelta(
            seconds=WAIT_SECONDS
        )

        topics = [engine.settings().topic(t) for t in (topic_names.EVENTS, *topic_names.REQUESTS)]
        led = asyncio.run(leaders(cluster.bootstrap, topics))
        victim = cluster.node(led.most_common(1)[0][0])
        failures_before = engine.metric_total("linkflow_orchestrator_commit_failures_total")
        assert all(engine.get(e)["status"] == "running" for e in ids), "every run is in flight at the kill"
        assert victim.pid is not None
        to_kill = (first_due - datetime.now(UTC)).total_seconds() - KILL_BEFORE_DUE_SECONDS
        assert to_kill > -KILL_BEFORE_DUE_SECONDS + 0.5, (
            f"too slow to start the runs: the first is due in {to_kill}s"
        )
        time.sleep(max(0.0, to_kill))
        with ReadinessProbe(engine.url) as probe:
            killed_at = datetime.now(UTC)
            os.killpg(victim.pid, signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait(10)
            print(
                f"killed node {victim.node_id}, leader of {led[victim.node_id]} of {led.total()} partitions, "
                f"{time.monotonic() - first_start:.1f}s after the first run started"
            )

            finished = {e: engine.wait_status(e, timeout=90) for e in ids}
            all_done = time.monotonic()
            brokers_after = wait_for_metric(engine, "linkflow_kafka_brokers", 2, 30)
            time.sleep(1.0)  # a few more answers once everything is done
        assert {b["status"] for b in finished.values()} == {"success"}, {
            e: b["status"] for e, b in finished.items()
        }
        for i, execution_id in enumerate(ids):
            assert finished[execution_id]["nodes"]["t"]["output"] == i * 7
            ended = datetime.fromisoformat(finished[execution_id]["finished_at"].replace("Z", "+00:00"))
            assert ended > killed_at, f"{execution_id} had finished before the kill: it proves nothing"
        assert_exactly_once(engine, ids)

        assert brokers_after == 2, "the engine's broker gauge shows the lost broker"
        assert not cluster.is_ready(timeout=2.0), "the survivors list two brokers"
        assert probe.answers and all(isinstance(a, int) for a in probe.answers), (
            f"the readiness probe went unanswered: {[a for a in probe.answers if not isinstance(a, int)][:3]}"
        )
        assert probe.answers[-1] == 200, f"not ready again after the failover: {probe.answers[-10:]}"
        failures = engine.metric_total("linkflow_orchestrator_commit_failures_total") - failures_before
        print(
            f"all runs done {all_done - first_start:.1f}s after the first started; readiness answers: "
            f"{Counter(probe.answers)}; orchestrator commit failures: {failures:g}; "
            f"test took {time.monotonic() - began:.0f}s"
        )
    finally:
        engine.stop()
