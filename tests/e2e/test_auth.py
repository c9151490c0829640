"""API keys on a real engine: refused start without keys, 401/403, team scoping, revocation.

One engine with ``LINKFLOW_AUTH=required`` serves every test here; keys are made with the
``linkflow keys`` CLI (as an operator would, before the engine runs) and over ``/api/keys``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from linkflow_stream.client import Client, Forbidden, NotFound, Unauthorized
from linkflow_stream.dev.testing import ROOT, EngineProcess, call

pytestmark = pytest.mark.e2e

TEAMS_AND_ROLES = {
    "alpha_admin": ("alpha", "admin"),
    "alpha_operator": ("alpha", "operator"),
    "alpha_viewer": ("alpha", "viewer"),
    "beta_operator": ("beta", "operator"),
}


@pytest.fixture(scope="module")
def secured(
    kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineProcess, dict[str, str]]]:
    engine = EngineProcess(
        bootstrap=kafka, workdir=tmp_path_factory.mktemp("auth"), extra_env={"LINKFLOW_AUTH": "required"}
    )
    with pytest.raises(RuntimeError, match="API keys are required"):
        engine.start(timeout=60)  # no key exists yet: the engine refuses to serve
    assert engine.proc is not None
    assert engine.proc.returncode == 2
    keys = {name: engine.create_key(team, role) for name, (team, role) in TEAMS_AND_ROLES.items()}
    engine.start()
    yield engine, keys
    engine.stop()


def as_key(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def transform_workflow(**extra: Any) -> dict[str, Any]:
    return {
        "id": f"auth-{uuid.uuid4().hex[:8]}",
        "nodes": [{"id": "double", "type": "transform", "config": {"expression": "input.n * 2"}}],
        **extra,
    }


def test_the_engine_refused_to_start_while_no_key_existed(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, _ = secured
    log = engine.log_path.read_text()
    assert "not starting: API keys are required" in log
    assert "linkflow keys create --team <team> --role admin" in log


def test_without_a_valid_key_only_the_probes_answer(secured: tuple[EngineProcess, dict[str, str]]) -> None:
    engine, keys = secured
    for headers in ({}, {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}, as_key("lfk_0123456789ab_nope")):
        status, body = call("GET", f"{engine.url}/api/executions", headers=headers)
        assert status == 401, body
        assert body["error"]["type"] == "unauthorized"
    status, body = call("GET", f"{engine.url}/api/no-such-route")
    assert status == 401, body  # not 404: an unauthenticated caller learns nothing of the routes
    status, body = call("GET", f"{engine.registry_url}/api/workers/status")
    assert status == 401, body
    for path in ("/healthz", "/readyz"):
        assert call("GET", f"{engine.url}{path}")[0] == 200
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:  # Prometheus text, no key
        assert resp.status == 200 and b"linkflow_executions_active" in resp.read()
    assert call("GET", f"{engine.registry_url}/healthz")[0] == 200
    # the API's description is open too (ADR 0024): the same for everyone, no data in it
    for base in (engine.url, engine.registry_url):
        status, doc = call("GET", f"{base}/openapi.json")
        assert status == 200 and doc["openapi"] == "3.1.0"
        with urllib.request.urlopen(f"{base}/docs", timeout=10) as resp:
            assert resp.status == 200
    status, body = call("GET", f"{engine.url}/api/executions", headers=as_key(keys["alpha_viewer"]))
    assert status == 200, body


def test_roles_decide_what_a_key_may_do(secured: tuple[EngineProcess, dict[str, str]]) -> None:
    engine, keys = secured
    wf = transform_workflow()
    status, body = call("POST", f"{engine.url}/api/workflows", wf, as_key(keys["alpha_viewer"]))
    assert (status, body["error"]["type"]) == (403, "forbidden")
    status, body = call("POST", f"{engine.url}/api/workflows", wf, as_key(keys["alpha_operator"]))
    assert status == 201, body
    start = {"workflow_id": wf["id"], "input_data": {"n": 1}}
    status, body = call("POST", f"{engine.url}/api/executions", start, as_key(keys["alpha_viewer"]))
    assert status == 403, body
    for path in ("/api/keys", "/api/admin/queue/status"):
        status, body = call("GET", f"{engine.url}{path}", headers=as_key(keys["alpha_operator"]))
        assert status == 403, (path, body)
        status, _ = call("HEAD", f"{engine.url}{path}", headers=as_key(keys["alpha_viewer"]))
        assert status == 403, path  # HEAD runs the GET handler: it needs what GET needs
        assert call("GET", f"{engine.url}{path}", headers=as_key(keys["alpha_admin"]))[0] == 200
    worker = {"id": f"w-{uuid.uuid4().hex[:6]}", "capacity": 2}
    status, body = call(
        "POST", f"{engine.registry_url}/api/workers/register", worker, as_key(keys["alpha_operator"])
    )
    assert status == 403, body
    status, body = call(
        "POST", f"{engine.registry_url}/api/workers/register", worker, as_key(keys["alpha_admin"])
    )
    assert status == 201, body
    for base in (engine.registry_url, engine.url):  # the worker status: an admin's on both ports
        for name in ("alpha_viewer", "alpha_operator"):
            status, body = call("GET", f"{base}/api/workers/status", headers=as_key(keys[name]))
            assert status == 403, (base, name, body)
        status, body = call("GET", f"{base}/api/workers/status", headers=as_key(keys["alpha_admin"]))
        assert status == 200, (base, body)


def test_a_team_sees_and_touches_only_its_own_workflows_and_runs(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, keys = secured
    alpha, beta, admin = (
        as_key(keys["alpha_operator"]),
        as_key(keys["beta_operator"]),
        as_key(keys["alpha_admin"]),
    )
    wf = transform_workflow()
    status, body = call("POST", f"{engine.url}/api/workflows", {**wf, "team": "beta"}, alpha)
    assert status == 400, body  # the key decides the team; a body naming another is refused
    assert call("POST", f"{engine.url}/api/workflows", wf, alpha)[0] == 201
    status, shown = call("GET", f"{engine.url}/api/workflows/{wf['id']}", headers=alpha)
    assert (status, shown["team"]) == (200, "alpha")

    status, run = call(
        "POST",
        f"{engine.url}/api/executions?wait=30",
        {"workflow_id": wf["id"], "input_data": {"n": 21}},
        alpha,
    )
    assert (status, run["status"], run["nodes"]["double"]["output"], run["team"]) == (
        200,
        "success",
        42,
        "alpha",
    )
    run_id = run["id"]

    # beta: every route answers as if alpha's workflow and run did not exist
    for method, path in (
        ("GET", f"/api/workflows/{wf['id']}"),
        ("PUT", f"/api/workflows/{wf['id']}/retry"),
        ("GET", f"/api/executions/{run_id}"),
        ("GET", f"/api/executions/{run_id}/logs"),
        ("GET", f"/api/executions/{run_id}/events"),
        ("GET", f"/api/executions/{run_id}?as_of_seq=1"),
        ("GET", f"/api/executions/{run_id}/cost"),
        ("GET", f"/api/executions/{run_id}/metrics"),
        ("POST", f"/api/executions/{run_id}/cancel"),
        ("POST", f"/api/executions/{run_id}/recover"),
        ("POST", f"/api/executions/{run_id}/pause"),
        ("POST", f"/api/executions/{run_id}/resume"),
        ("POST", f"/api/executions/{run_id}/test-retry"),
    ):
        body_in = {"strategy": "fixed"} if method == "PUT" else None
        status, body = call(method, f"{engine.url}{path}", body_in, beta)
        assert (status, body["error"]["type"]) == (404, "not_found"), (method, path, body)
    status, body = call(
        "POST", f"{engine.url}/api/executions", {"workflow_id": wf["id"], "input_data": {"n": 1}}, beta
    )
    assert status == 404, body
    status, body = call("POST", f"{engine.url}/api/workflows", wf, beta)
    assert (status, body["error"]["type"]) == (409, "conflict")  # the id is alpha's: no new version for beta
    assert wf["id"] not in {
        w["id"] for w in call("GET", f"{engine.url}/api/workflows", headers=beta)[1]["workflows"]
    }
    for query in ("", "?team=alpha", f"?workflow_id={wf['id']}"):
        status, page = call("GET", f"{engine.url}/api/executions{query}", headers=beta)
        assert status == 200
        assert run_id not in {e["id"] for e in page["executions"]}, query
        assert all(e["team"] == "beta" for e in page["executions"])
    status, report = call("GET", f"{engine.url}/api/costs/report?period=all&group_by=team", headers=beta)
    assert status == 200
    assert {t["team"] for t in report["teams"]} <= {"beta"}

    # alpha's own keys, and an admin of any team, see it
    assert (
        call("GET", f"{engine.url}/api/executions/{run_id}", headers=as_key(keys["alpha_viewer"]))[0] == 200
    )
    status, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf['id']}", headers=alpha)
    assert [e["id"] for e in page["executions"]] == [run_id]
    status, events = call("GET", f"{engine.url}/api/executions/{run_id}/events", headers=alpha)
    assert (status, events["events"][0]["type"]) == (200, "execution_created"), events
    status, report = call("GET", f"{engine.url}/api/costs/report?period=all", headers=alpha)
    assert wf["id"] in {w["workflow_id"] for w in report["workflows"]}
    status, page = call("GET", f"{engine.url}/api/executions?limit=1000", headers=admin)
    assert run_id in {e["id"] for e in page["executions"]}


def test_the_same_idempotency_key_in_two_teams_names_two_runs(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, keys = secured
    ids = []
    for name in ("alpha_operator", "beta_operator"):
        wf = transform_workflow()
        assert call("POST", f"{engine.url}/api/workflows", wf, as_key(keys[name]))[0] == 201
        headers = {**as_key(keys[name]), "Idempotency-Key": "order-7"}
        status, body = call(
            "POST", f"{engine.url}/api/executions", {"workflow_id": wf["id"], "input_data": {"n": 1}}, headers
        )
        assert status == 202, body
        ids.append(body["id"])
    assert ids[0] != ids[1]


def _until(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_keys_made_and_revoked_by_cli_and_api_take_effect_at_once(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, keys = secured
    admin = as_key(keys["alpha_admin"])

    # over HTTP: the answer carries the key once; the list never does
    status, made = call(
        "POST", f"{engine.url}/api/keys", {"team": "gamma", "role": "viewer", "name": "ui"}, admin
    )
    assert status == 201, made
    assert made["key"].startswith(f"lfk_{made['id']}_")
    assert call("GET", f"{engine.url}/api/executions", headers=as_key(made["key"]))[0] == 200
    status, listed = call("GET", f"{engine.url}/api/keys", headers=admin)
    assert made["id"] in {k["id"] for k in listed["keys"]}
    assert made["key"] not in str(listed) and "hash" not in str(listed)
    for bad in (
        {"team": "gamma", "role": "root"},
        {"team": "no spaces", "role": "viewer"},
        {"role": "viewer"},
    ):
        status, body = call("POST", f"{engine.url}/api/keys", bad, admin)
        assert (status, body["error"]["type"]) == (400, "validation"), bad
    status, revoked = call("POST", f"{engine.url}/api/keys/{made['id']}/revoke", None, admin)
    assert status == 200 and revoked["revoked_at"]
    assert call("GET", f"{engine.url}/api/executions", headers=as_key(made["key"]))[0] == 401

    # with the CLI, while the engine runs: the new key works on its first request
    cli_key = engine.create_key("gamma", "operator")
    assert call("GET", f"{engine.url}/api/executions", headers=as_key(cli_key))[0] == 200
    key_id = cli_key.split("_")[1]
    listing = engine.keys_cli("list")
    assert listing.returncode == 0 and key_id in listing.stdout and cli_key not in listing.stdout
    done = engine.keys_cli("revoke", key_id)
    assert done.returncode == 0, done.stderr
    assert _until(lambda: call("GET", f"{engine.url}/api/executions", headers=as_key(cli_key))[0] == 401)
    assert engine.keys_cli("revoke", "0123456789ab").returncode != 0  # unknown id: an error, not silence


def test_the_client_and_the_cli_send_the_key_and_map_refusals(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, keys = secured
    with pytest.raises(Unauthorized) as missing:
        Client(engine.url, api_key="").list_executions()
    assert missing.value.status == 401
    wf = transform_workflow()
    with pytest.raises(Forbidden):
        Client(engine.url, api_key=keys["alpha_viewer"]).register_workflow(wf)
    operator = Client(engine.url, api_key=keys["alpha_operator"])
    assert operator.register_workflow(wf)["version"] == 1
    run = operator.start_execution(wf["id"], {"n": 4}, wait=30)
    assert run.execution is not None and run.execution["team"] == "alpha"
    with pytest.raises(NotFound):  # another team's run is answered as missing
        Client(engine.url, api_key=keys["beta_operator"]).get_execution(run.id)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKFLOW_")}
    command = [sys.executable, "-m", "linkflow_stream.cli", "executions", "get", run.id, "--url", engine.url]
    refused = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and "401 unauthorized" in refused.stderr
    shown = subprocess.run(
        command,
        cwd=ROOT,
        env={**env, "LINKFLOW_API_KEY": keys["alpha_viewer"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == run.id


def test_a_webhook_needs_its_token_not_a_key_and_its_token_is_no_key(
    secured: tuple[EngineProcess, dict[str, str]],
) -> None:
    engine, keys = secured
    wf = transform_workflow()
    status, registered = call("POST", f"{engine.url}/api/workflows", wf, as_key(keys["alpha_operator"]))
    assert status == 201, registered
    token = registered["webhook_token"]
    status, body = call(
        "POST", f"{engine.url}/webhook/{wf['id']}?wait=30", {"n": 4}, {"X-LinkFlow-Token": token}
    )
    assert status == 200, body
    assert body["team"] == "alpha"
    assert body["nodes"]["double"]["output"] == 8
    status, body = call("GET", f"{engine.url}/api/executions", headers=as_key(token))
    assert status == 401, body
    status, body = call("POST", f"{engine.url}/webhook/{wf['id']}", {"n": 4}, as_key(keys["alpha_admin"]))
    assert status == 401, body  # an API key is not the workflow's token


def test_a_websocket_takes_the_key_as_a_subprotocol(secured: tuple[EngineProcess, dict[str, str]]) -> None:
    """A browser cannot set Authorization on a WebSocket: it offers ``bearer.<key>`` (ADR 0038)."""
    import asyncio

    import aiohttp

    engine, keys = secured
    wf = transform_workflow()
    assert call("POST", f"{engine.url}/api/workflows", wf, as_key(keys["alpha_operator"]))[0] == 201
    status, run = call(
        "POST",
        f"{engine.url}/api/executions?wait=20",
        {"workflow_id": wf["id"], "input_data": {"n": 2}},
        as_key(keys["alpha_operator"]),
    )
    assert status == 200, run
    url = engine.url.replace("http", "ws") + f"/api/executions/{run['id']}/watch"

    async def watch(protocols: tuple[str, ...]) -> tuple[str | None, list[Any]] | int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, protocols=protocols) as ws:
                    return ws.protocol, [m.json() async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(watch(("linkflow",))) == 401
    assert asyncio.run(watch(("linkflow", "bearer.lfk_0123456789ab_nope"))) == 401
    assert asyncio.run(watch(("linkflow", f"bearer.{keys['beta_operator']}"))) == 404, "another team's run"
    answer = asyncio.run(watch(("linkflow", f"bearer.{keys['alpha_viewer']}")))
    assert not isinstance(answer, int), answer
    protocol, bodies = answer
    assert protocol == "linkflow", "the engine never chooses the key back"
    assert [b["status"] for b in bodies] == ["success"]

    # the subprotocol is a key only on a WebSocket upgrade: on a plain request it is none
    offered = {"Sec-WebSocket-Protocol": f"linkflow, bearer.{keys['alpha_viewer']}"}
    status, body = call("GET", f"{engine.url}/api/executions/{run['id']}", headers=offered)
    assert status == 401, body
