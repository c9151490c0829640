"""docker-compose.yml: `docker compose config` (or Debian's `docker-compose`, which validates
without a Docker engine) where one is installed, and the file read as data everywhere, for what
that command does not check: ports and URLs line up, the engine's variables are settings it has,
mounted files exist, the README says what each service is for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from linkflow_stream.dev.registry import CCOMPAT_PATH
from linkflow_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "deploy/otel/collector.yaml").read_text())
    assert isinstance(data, dict)
    return data


def env(service: dict[str, Any]) -> dict[str, str]:
    found = service.get("environment", {})
    assert isinstance(found, dict), "environment as a mapping, so anchors merge"
    return {str(k): str(v) for k, v in found.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}


def compose_command() -> list[str] | None:
    """``docker compose`` if the plugin is there, else ``docker-compose``, else ``None``."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: the tests below stand in")
    done = subprocess.run(
        [*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_has_an_image_and_depends_only_on_services_that_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("image"), name
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on {dependency}"


def test_host_ports_are_unique_and_volumes_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    published = [str(p) for s in services.values() for p in s.get("ports", [])]
    host_ports = [p.rsplit(":", 1)[0].split(":")[-1] for p in published]
    assert len(host_ports) == len(set(host_ports)), host_ports
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"
            else:
                assert source in compose["volumes"], f"{name} uses volume {source}"


def test_the_engine_variables_are_settings_the_engine_has(services: dict[str, Any]) -> None:
    fields = {f"LINKFLOW_{name.upper()}" for name in Settings.model_fields}
    for name in ("linkflow", "topics"):
        unknown = {k for k in env(services[name]) if k.startswith("LINKFLOW_")} - fields
        assert not unknown, f"{name}: {unknown}"


def test_engine_topics_and_kafka_ui_share_one_schema_registry_url(services: dict[str, Any]) -> None:
    url = env(services["linkflow"])["LINKFLOW_SCHEMA_REGISTRY_URL"]
    assert env(services["topics"])["LINKFLOW_SCHEMA_REGISTRY_URL"] == url
    assert env(services["kafka-ui"])["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"] == url
    parsed = urlparse(url)
    assert parsed.hostname == "schema-registry"
    assert parsed.path == CCOMPAT_PATH  # Apicurio's Confluent-compatible API, as the dev launcher uses
    assert parsed.port in container_ports(services["schema-registry"])
    for name in ("linkflow", "topics", "kafka-ui"):
        assert "schema-registry" in services[name]["depends_on"], name


def test_the_registry_keeps_its_schemas_in_the_composes_kafka(services: dict[str, Any]) -> None:
    registry = env(services["schema-registry"])
    assert registry["APICURIO_STORAGE_KIND"] == "kafkasql"
    kafka = env(services["kafka"])
    assert registry["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"] in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert env(services["linkflow"])["LINKFLOW_BOOTSTRAP_SERVERS"] in kafka["KAFKA_ADVERTISED_LISTENERS"]


def test_engine_traces_reach_the_collector_and_the_collector_reaches_jaeger(
    services: dict[str, Any], collector: dict[str, Any]
) -> None:
    engine = env(services["linkflow"])
    endpoint = urlparse(engine["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "otel-collector"
    protocols = collector["receivers"]["otlp"]["protocols"]
    protocol = "http" if engine["OTEL_EXPORTER_OTLP_PROTOCOL"].startswith("http") else "grpc"
    assert protocols[protocol]["endpoint"] == f"0.0.0.0:{endpoint.port}"
    assert "otel-collector" in services["linkflow"]["depends_on"]

    mounted = {str(v).split(":")[1] for v in services["otel-collector"]["volumes"]}
    config_arg = next(a for a in services["otel-collector"]["command"] if a.startswith("--config="))
    assert config_arg.removeprefix("--config=") in mounted

    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    (exporter,) = pipeline["exporters"]
    host, port = collector["exporters"][exporter]["endpoint"].split(":")
    assert host == "jaeger" and host in services
    assert f"--set=receivers.otlp.protocols.grpc.endpoint=0.0.0.0:{port}" in services["jaeger"]["command"]
    assert 16686 in container_ports(services["jaeger"])  # the viewer's UI


def test_the_readme_says_what_each_service_is_for(services: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### What each service is for") :]
    section = section[: section.index("\n## ", 1) if "\n## " in section else None]
    for name in services:
        assert f"`{name}`" in section, f"README does not say what {name} is for"
