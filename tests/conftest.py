"""Shared fixtures: a real Kafka broker for the session, engines as real subprocesses."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis
import pytest

from linkflow_stream.dev.broker import Broker, BrokerError, free_port
from linkflow_stream.dev.registry import RegistryError, SchemaRegistryServer, application
from linkflow_stream.dev.testing import EngineProcess, TargetServer, serve

ROOT = Path(__file__).resolve().parents[1]
# hypothesis's pytest plugin imports hypothesis lazily in the terminal summary; when no test
# imported it (an integration-only run), CPython 3.11.7 then failed in pytest's assertion
# rewriter with "SystemError: AST constructor recursion depth mismatch" after all tests passed.

# No per-example deadline: the properties are what they check, and on a loaded 2-core CI machine
# one example stalled past hypothesis's default 200 ms is a timing failure, not a finding.
hypothesis.settings.register_profile("linkflow", deadline=None)
hypothesis.settings.load_profile("linkflow")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: ``LINKFLOW_TEST_BOOTSTRAP`` if set, else one started here."""
    external = os.environ.get("LINKFLOW_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    broker = Broker(data_dir=tmp_path_factory.mktemp("kafka"), port=free_port())
    try:
        broker.start(cache_dir=ROOT / ".linkflow")
    except BrokerError as exc:
        pytest.fail(f"Kafka broker did not start:\n{exc.message}\n{broker.log_tail()}")
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real schema registry's Confluent-compatible API: ``LINKFLOW_TEST_SCHEMA_REGISTRY``
    if set, else Apicurio Registry started here from Maven Central. Skipped only when the
    application cannot be fetched, and never under ``LINKFLOW_REQUIRE_SCHEMA_REGISTRY=1`` (CI)."""
    external = os.environ.get("LINKFLOW_TEST_SCHEMA_REGISTRY")
    if external:
        yield external
        return
    cache = ROOT / ".linkflow"
    try:
        application(cache)
    except RegistryError as exc:
        if os.environ.get("LINKFLOW_REQUIRE_SCHEMA_REGISTRY") == "1":
            pytest.fail(f"the schema registry could not be fetched:\n{exc.message}")
        pytest.skip(f"Apicurio Registry could not be fetched from Maven Central: {exc.message}")
    server = SchemaRegistryServer(data_dir=tmp_path_factory.mktemp("schema-registry"), port=free_port())
    try:
        server.start(cache_dir=cache)
    except RegistryError as exc:
        pytest.fail(f"the schema registry did not start:\n{exc.message}")
    yield server.url
    server.stop()


@pytest.fixture
def engine_factory(kafka: str, tmp_path: Path) -> Iterator[Callable[..., EngineProcess]]:
    """Start engines with a fresh topic prefix and consumer group each; all stopped at the end."""
    started: list[EngineProcess] = []

    def make(**env: str) -> EngineProcess:
        engine = EngineProcess(bootstrap=kafka, workdir=tmp_path, extra_env=env)
        engine.start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.stop()


@pytest.fixture(scope="module")
def engine(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine shared by a module's tests; each test uses its own workflow ids."""
    e = EngineProcess(bootstrap=kafka, workdir=tmp_path_factory.mktemp("engine"))
    e.start()
    yield e
    e.stop()


@pytest.fixture(scope="session")
def target() -> Iterator[TargetServer]:
    yield from serve()
