"""The typed client (sync and asyncio), the ``linkflow workflows|executions`` CLI and the served
OpenAPI document, against a real engine on the real broker.

Each test uses its own workflow ids on the module's one engine. The CLI runs as a subprocess, as
a script would run it, and its exit codes are the contract checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from linkflow_stream.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    ValidationFailed,
    WaitTimedOut,
)
from linkflow_stream.dev.broker import free_port
from linkflow_stream.dev.testing import ROOT, EngineProcess, TargetServer, call
from linkflow_stream.http.api import Api
from linkflow_stream.http.openapi import api_document

pytestmark = pytest.mark.e2e


def wid(name: str) -> str:
    return f"cl-{name}-{uuid.uuid4().hex[:8]}"


def doubling(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "nodes": [{"id": "double", "type": "transform", "config": {"expression": "input.n * 2"}}],
    }


def waiting(workflow_id: str, seconds: float) -> dict[str, Any]:
    return {"id": workflow_id, "nodes": [{"id": "w", "type": "wait", "config": {"seconds": seconds}}]}


def failing(workflow_id: str, target: TargetServer) -> dict[str, Any]:
    """One HTTP node that gets a 400: ``http_4xx`` is not retried, so the run fails."""
    return {
        "id": workflow_id,
        "nodes": [{"id": "h", "type": "http", "config": {"url": f"{target.url}/status/400"}}],
    }


def schema_validator(name: str) -> Draft202012Validator:
    """A validator of the served document's component ``name`` (its $refs resolve in the document)."""
    doc = api_document(Api.ADMIN_ROUTES)
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


# -- the sync client ------------------------------------------------------------------------------
def test_sync_client_registers_starts_waits_reads_and_lists(engine: EngineProcess) -> None:
    with Client(engine.url) as lf:
        workflow_id = wid("sync")
        registered = lf.register_workflow(doubling(workflow_id))
        assert registered["webhook_token"].startswith("lfw_")  # shown once, with the first version
        assert registered == {"id": workflow_id, "version": 1, "webhook_token": registered["webhook_token"]}
        assert lf.register_workflow(doubling(workflow_id)) == {
            "id": workflow_id,
            "version": 1,
            "unchanged": True,
        }
        assert lf.get_workflow(workflow_id)["nodes"][0]["id"] == "double"
        assert workflow_id in {w["id"] for w in lf.list_workflows()}

        started = lf.start_execution(workflow_id, {"n": 21}, wait=30, priority="high")
        assert started.ended and started.status == "success" and not started.replayed
        assert started.execution is not None
        assert started.execution["nodes"]["double"]["output"] == 42
        assert started.execution["priority"] == "high"
        schema_validator("Execution").validate(started.execution)

        execution = lf.get_execution(started.id)
        assert (execution["status"], execution["workflow_id"]) == ("success", workflow_id)
        schema_validator("Execution").validate(execution)

        more = [lf.start_execution(workflow_id, {"n": n}) for n in (1, 2)]
        assert all(s.status == "pending" and s.execution is None for s in more)
        for s in more:
            assert lf.wait_for(s.id, 30, poll=0.1)["status"] == "success"
        page = lf.list_executions(workflow_id=workflow_id, limit=1)
        schema_validator("ExecutionPage").validate(page)
        assert page["count"] == 1 and page["next_cursor"] is not None
        brief = lf.list_execution_summaries(workflow_id=workflow_id, limit=1)
        schema_validator("ExecutionSummaryPage").validate(brief)
        assert [e["id"] for e in brief["executions"]] == [e["id"] for e in page["executions"]]
        assert brief["next_cursor"] == page["next_cursor"]
        assert not {"input_data", "nodes", "history"} & set(brief["executions"][0])
        every = [e["id"] for e in lf.iter_executions(workflow_id=workflow_id, page_size=1)]
        assert sorted(every) == sorted([started.id, *(s.id for s in more)])  # three pages, each run once
        assert every[0] == more[-1].id  # newest first
        assert [e["id"] for e in lf.iter_executions(workflow_id=workflow_id, status="failed")] == []

        lines = lf.logs(started.id)
        assert lines and any("execution created" in line["message"] for line in lines)
        assert lf.logs(started.id, level="error") == []
        cost = lf.execution_cost(started.id)
        assert cost["id"] == started.id
        assert "workflows" in lf.cost_report(period="all")
        assert lf.readiness()["status"] == "ready"


def test_sync_client_idempotency_key_names_one_run(engine: EngineProcess) -> None:
    with Client(engine.url) as lf:
        workflow_id = wid("idem")
        lf.register_workflow(doubling(workflow_id))
        key = f"order-{uuid.uuid4().hex[:6]}"
        first = lf.start_execution(workflow_id, {"n": 1}, idempotency_key=key)
        again = lf.start_execution(workflow_id, {"n": 1}, idempotency_key=key, wait=30)
        assert again.id == first.id and again.replayed and not first.replayed
        assert again.status == "success"


def test_sync_client_errors_are_typed(engine: EngineProcess) -> None:
    with Client(engine.url) as lf:
        with pytest.raises(NotFound) as missing:
            lf.get_execution("exec_" + "0" * 32)
        assert (missing.value.status, missing.value.error_type, missing.value.retryable) == (
            404,
            "not_found",
            False,
        )
        with pytest.raises(NotFound):
            lf.start_execution(wid("none-such"))
        with pytest.raises(ValidationFailed) as invalid:
            lf.register_workflow(
                {
                    "id": wid("bad"),
                    "nodes": [{"id": "a", "type": "transform", "config": {"expression": "{ x"}}],
                }
            )
        assert "node 'a': config.expression" in invalid.value.message
        workflow_id = wid("errs")
        lf.register_workflow(doubling(workflow_id))
        with pytest.raises(ValidationFailed) as bad_retry:
            lf.set_workflow_retry(workflow_id, strategy="sometimes", max_attempts=0)
        assert (
            "strategy must be" in bad_retry.value.message
            and "max_attempts must be" in bad_retry.value.message
        )
        done = lf.start_execution(workflow_id, {"n": 2}, wait=30)
        assert done.status == "success"
        with pytest.raises(ValidationFailed) as bad_timeout:
            lf.set_timeout(done.id, 0)
        assert "timeout_seconds must be greater than 0" in bad_timeout.value.message
        with pytest.raises(Conflict) as ended:
            lf.cancel_execution(done.id)
        assert "already ended" in ended.value.message
        with pytest.raises(ValidationFailed) as bad_status:
            lf.list_executions(status="sleeping")  # type: ignore[arg-type]
        assert "status must be one of" in bad_status.value.message
    with pytest.raises(ConnectionFailed) as down:
        Client(f"http://127.0.0.1:{free_port()}", timeout=5).get_execution("x")
    assert down.value.retryable and down.value.error_type == "connection"


# -- the asyncio client ---------------------------------------------------------------------------
async def test_async_client_runs_cancels_and_maps_errors(engine: EngineProcess) -> None:
    async with AsyncClient(engine.url) as lf:
        workflow_id = wid("async")
        assert (await lf.register_workflow(doubling(workflow_id)))["version"] == 1
        started = await lf.start_execution(workflow_id, {"n": 5}, wait=30)
        assert started.execution is not None and started.execution["nodes"]["double"]["output"] == 10
        assert (await lf.get_execution(started.id))["status"] == "success"
        page = await lf.list_executions(workflow_id=workflow_id)
        assert [e["id"] for e in page["executions"]] == [started.id]
        brief = await lf.list_execution_summaries(workflow_id=workflow_id)
        assert [(e["id"], e["status"]) for e in brief["executions"]] == [(started.id, "success")]
        assert "nodes" not in brief["executions"][0]
        assert [e["id"] async for e in lf.iter_executions(workflow_id=workflow_id, page_size=1)] == [
            started.id
        ]
        assert await lf.logs(started.id, node_id="double")

        slow_id = wid("async-wait")
        await lf.register_workflow(waiting(slow_id, 30))
        slow = await lf.start_execution(slow_id, priority="low")
        assert slow.status == "pending"
        with pytest.raises(WaitTimedOut):
            await lf.wait_for(slow.id, 0.5, poll=0.1)
        assert (await lf.cancel_execution(slow.id)) == {"id": slow.id, "status": "cancelling"}
        cancelled = await lf.wait_for(slow.id, 30, poll=0.1)
        assert cancelled["status"] == "cancelled" and cancelled["nodes"]["w"]["status"] == "cancelled"
        with pytest.raises(Conflict):
            await lf.cancel_execution(slow.id)
        with pytest.raises(NotFound):
            await lf.get_execution("exec_nope")
        with pytest.raises(ValidationFailed) as invalid:
            await lf.start_execution(workflow_id, wait=301)
        assert "wait must be between" in invalid.value.message
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=5) as down:
        with pytest.raises(ConnectionFailed):
            await down.get_execution("x")


# -- the served document --------------------------------------------------------------------------
def test_both_apps_serve_their_document_and_the_docs_page(engine: EngineProcess) -> None:
    status, doc = call("GET", f"{engine.url}/openapi.json")
    assert status == 200
    assert doc == json.loads(json.dumps(api_document(Api.ADMIN_ROUTES)))
    status, reg = call("GET", f"{engine.registry_url}/openapi.json")
    assert status == 200 and "/api/workers/register" in reg["paths"] and "/api/executions" not in reg["paths"]
    with Client(engine.url) as lf:
        assert lf.openapi()["openapi"] == "3.1.0"
    for base in (engine.url, engine.registry_url):
        import urllib.request

        with urllib.request.urlopen(f"{base}/docs", timeout=10) as resp:
            page = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert 'fetch("openapi.json")' in page


def test_a_refused_registration_on_the_registry_names_the_field(engine: EngineProcess) -> None:
    status, body = call("POST", f"{engine.registry_url}/api/workers/register", {"id": "w1", "capacity": 0})
    assert status == 400 and body["error"]["message"] == (
        "invalid request body: capacity must be greater than or equal to 1"
    )


# -- the CLI --------------------------------------------------------------------------------------
def cli(
    *args: str, url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LINKFLOW_")}
    command = [sys.executable, "-m", "linkflow_stream.cli", *args, *(["--url", url] if url else [])]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_cli_apply_start_get_list_cancel_with_exit_codes(
    engine: EngineProcess, target: TargetServer, tmp_path: Path
) -> None:
    workflow_id = wid("cli")
    file = tmp_path / "wf.json"
    file.write_text(json.dumps(doubling(workflow_id)))
    done = cli("workflows", "apply", str(file), url=engine.url)
    assert done.returncode == 0, done.stderr
    applied = json.loads(done.stdout)
    assert {k: applied[k] for k in ("id", "version")} == {"id": workflow_id, "version": 1}
    assert applied["webhook_token"].startswith("lfw_")  # the CLI shows the one-time token too

    done = cli("executions", "start", workflow_id, "--input", '{"n": 4}', "--wait", "30", url=engine.url)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert (run["status"], run["nodes"]["double"]["output"]) == ("success", 8)

    # LINKFLOW_URL instead of --url; the input from a file
    (tmp_path / "input.json").write_text('{"n": 50}')
    done = cli(
        "executions",
        "start",
        workflow_id,
        "--input",
        f"@{tmp_path / 'input.json'}",
        env={"LINKFLOW_URL": engine.url},
    )
    assert done.returncode == 0, done.stderr
    pending = json.loads(done.stdout)
    assert pending["status"] == "pending"
    done = cli("executions", "get", pending["id"], "--wait", "30", url=engine.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["nodes"]["double"]["output"] == 100

    done = cli("executions", "list", "--workflow-id", workflow_id, "--limit", "1", "--all", url=engine.url)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["count"] == 2 and {e["id"] for e in listed["executions"]} == {run["id"], pending["id"]}
    done = cli("executions", "logs", run["id"], url=engine.url)
    assert done.returncode == 0 and "execution created" in done.stdout

    # a run that fails, when waited for: exit 1, the run still printed
    bad_id = wid("cli-fails")
    (tmp_path / "bad.json").write_text(json.dumps(failing(bad_id, target)))
    assert cli("workflows", "apply", str(tmp_path / "bad.json"), url=engine.url).returncode == 0
    done = cli("executions", "start", bad_id, "--wait", "30", url=engine.url)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["status"] == "failed"

    # a run that has not ended when the wait is over: exit 5; cancelled, then waited for: exit 1
    slow_id = wid("cli-slow")
    (tmp_path / "slow.json").write_text(json.dumps(waiting(slow_id, 30)))
    assert cli("workflows", "apply", str(tmp_path / "slow.json"), url=engine.url).returncode == 0
    done = cli("executions", "start", slow_id, "--wait", "0.5", "--priority", "high", url=engine.url)
    assert done.returncode == 5, done.stderr
    slow = json.loads(done.stdout)
    done = cli("executions", "cancel", slow["id"], url=engine.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "cancelling"
    done = cli("executions", "get", slow["id"], "--wait", "30", url=engine.url)
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "cancelled"
    done = cli("executions", "cancel", slow["id"], url=engine.url)
    assert done.returncode == 2 and "409 conflict" in done.stderr  # ended: refused


def test_cli_exit_codes_for_refusals_missing_things_and_no_engine(
    engine: EngineProcess, tmp_path: Path
) -> None:
    # 2: usage, or a request the engine refused
    assert cli("executions", "start", "x", "--input", "{nope", url=engine.url).returncode == 2
    assert cli("executions", "start", "x", "--wait", "301", url=engine.url).returncode == 2
    (tmp_path / "bad.json").write_text(json.dumps({"id": wid("bad"), "nodes": []}))
    done = cli("workflows", "apply", str(tmp_path / "bad.json"), url=engine.url)
    assert done.returncode == 2 and "400 validation" in done.stderr and "nodes" in done.stderr
    (tmp_path / "notjson.json").write_text("nodes: []")
    assert cli("workflows", "apply", str(tmp_path / "notjson.json"), url=engine.url).returncode == 2
    # 3: not found
    done = cli("executions", "get", "exec_" + "0" * 32, url=engine.url)
    assert done.returncode == 3 and "404 not_found" in done.stderr
    assert cli("executions", "start", wid("none-such"), url=engine.url).returncode == 3
    assert cli("workflows", "get", wid("none-such"), url=engine.url).returncode == 3
    # 4: no engine there
    done = cli("executions", "list", url=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 4 and "no answer" in done.stderr
    # --help documents the codes
    assert "5  with --wait: the run had not ended" in cli("executions", "start", "--help").stdout
