"""The autoscaling examples in deploy/autoscaling/ name what the engine really has: a command line
`linkflow run` accepts, settings that exist, and the metric the engine exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from linkflow_stream.cli import main
from linkflow_stream.engine import placement_problem
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "autoscaling"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_the_executor_deployment_runs_a_placement_the_engine_accepts() -> None:
    (deployment,) = [d for d in documents("gpu-executors.yaml") if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["linkflow", "run"]
    args = dict(zip(command[2::2], command[3::2], strict=True))
    assert placement_problem(Settings(roles=args["--roles"], executor_pools=args["--pools"])) is None
    fields = Settings.model_fields
    for env in container["env"]:
        assert env["name"].removeprefix("LINKFLOW_").lower() in fields, env["name"]
    assert "--pools" in CliRunner().invoke(main, ["run", "--help"]).output


def test_keda_and_the_hpa_scale_on_the_exported_metric() -> None:
    exported = Metrics(active=lambda: 0)
    exported.pool_desired_workers.labels("gpu").set(3)
    assert 'linkflow_pool_desired_workers{pool="gpu"} 3.0' in exported.render().decode()
    (scaled,) = [d for d in documents("gpu-executors.yaml") if d["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"] == 'max(linkflow_pool_desired_workers{pool="gpu"})'
    assert scaled["spec"]["scaleTargetRef"]["name"] == "linkflow-executor-gpu"
    (hpa,) = documents("hpa-gpu-executors.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "linkflow_pool_desired_workers"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"pool": "gpu"}
