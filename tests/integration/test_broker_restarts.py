"""The dev broker on the real thing: restarts after SIGTERM and after kill -9 are ready for admin
calls at once, a running broker is reused, and readiness means an answer, never a log line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from linkflow_stream.dev.broker import Broker, BrokerError, StartOutcome, free_port
from linkflow_stream.kafka.topics import TopicSpec, apply_topics
from linkflow_stream.settings import Settings
from tests.integration.brokers import broker_pids

pytestmark = pytest.mark.integration

CACHE = Path(__file__).resolve().parents[2] / ".linkflow"


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[[], Broker]]:
    """Brokers for one data dir and one port, as successive ``linkflow kafka start`` calls make them."""
    data_dir, port = tmp_path / "kafka", free_port()
    made: list[Broker] = []

    def make() -> Broker:
        made.append(Broker(data_dir=data_dir, port=port))
        return made[-1]

    yield make
    for broker in reversed(made):
        broker.stop(timeout=10)


def apply_a_topic(broker: Broker) -> list[str]:
    """What ``topics apply`` does (describe, create, check configs), for one fresh topic."""
    settings = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:8]}.")
    return asyncio.run(apply_topics(settings, specs=[TopicSpec(name="restart.check", partitions=2)]))


def start(broker: Broker) -> tuple[StartOutcome, float]:
    began = time.monotonic()
    outcome = broker.start(cache_dir=CACHE)
    return outcome, time.monotonic() - began


def test_restart_after_sigterm_is_ready_for_admin_calls(broker_factory: Callable[[], Broker]) -> None:
    first = broker_factory()
    assert start(first)[0] is StartOutcome.STARTED
    assert first.stop(), "a controlled shutdown of the running broker"
    assert not first.pid_file.exists()

    again = broker_factory()
    outcome, took = start(again)
    assert outcome is StartOutcome.STARTED
    print(f"ready {took:.1f}s after a clean stop")  # shown with -s: the figure ADR 0016 quotes
    assert again.is_ready()
    assert apply_a_topic(again), "the restarted broker creates a topic right away"


def test_restart_after_kill_9_is_ready_for_admin_calls(broker_factory: Callable[[], Broker]) -> None:
    first = broker_factory()
    start(first)
    assert first.process is not None
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    assert first.pid_file.exists(), "kill -9 leaves the pid file behind"

    again = broker_factory()
    outcome, took = start(again)
    assert outcome is StartOutcome.STARTED
    print(f"ready {took:.1f}s after kill -9")  # shown with -s: the figure ADR 0016 quotes
    assert again.process is not None
    assert broker_pids(again) == [again.process.pid]
    assert apply_a_topic(again), "the restarted broker creates a topic right away"


def test_start_reuses_a_running_broker(broker_factory: Callable[[], Broker]) -> None:
    first = broker_factory()
    start(first)
    assert first.process is not None

    second = broker_factory()
    outcome, took = start(second)
    assert outcome is StartOutcome.REUSED
    assert took < 10
    assert second.process is None
    assert second.pid == first.process.pid
    assert broker_pids(first) == [first.process.pid], "no second broker process"

    elsewhere = Broker(data_dir=first.data_dir, port=free_port())
    with pytest.raises(BrokerError, match=f"running on port {first.port}"):
        elsewhere.start(cache_dir=CACHE)
    assert broker_pids(first) == [first.process.pid], "a refused start leaves the broker alone"

    assert second.stop(), "a broker found through the pid file is stopped through it"
    assert first.process.wait(timeout=5) is not None
    assert broker_pids(first) == []


def test_not_ready_where_nothing_listens(tmp_path: Path) -> None:
    began = time.monotonic()
    assert not Broker(data_dir=tmp_path, port=free_port()).is_ready()
    assert time.monotonic() - began < 2


def test_not_ready_where_something_else_listens(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts connections, never answers a Kafka request
        assert not Broker(data_dir=tmp_path, port=server.getsockname()[1]).is_ready(timeout=1.0)


def test_a_port_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        broker = Broker(data_dir=tmp_path, port=server.getsockname()[1])
        broker.data_dir.mkdir(parents=True, exist_ok=True)
        broker.pid_file.write_text(str(os.getpid()))  # a stale pid file whose pid now names us
        with pytest.raises(BrokerError, match=f"port {broker.port} is in use by another process"):
            broker.start(cache_dir=CACHE)
    assert not broker.pid_file.exists(), "the stale pid file is removed, and its process left alone"
