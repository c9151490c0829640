"""Fuzzing every route of both APIs on a real engine: no input may give a 5xx.

Hypothesis draws a route from the apps' own routers (so a new route is fuzzed without anyone
listing it), fills its path parameters with real and made-up ids, and adds random query
parameters, headers and bodies: JSON of any shape, near-valid bodies with one field wrong, and
bytes that are not JSON at all. Every answer must be below 500, and every 4xx must carry the
``{"error": {"type", "message"}}`` body. The engine's log must not show an unhandled error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkflow_stream.dev.testing import EngineProcess
from linkflow_stream.http.api import Api, ApiDeps
from linkflow_stream.http.registry import RegistryApi

pytestmark = pytest.mark.e2e


def _routes(app: Any) -> list[tuple[str, str]]:
    return sorted(
        {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method != "*" and route.resource is not None
        }
    )


# the routers only: no handler runs while the route tables are read
API_ROUTES = _routes(Api(ApiDeps(*[None] * 5)).app())  # type: ignore[arg-type]
REGISTRY_ROUTES = _routes(RegistryApi(None, None, None).app())  # type: ignore[arg-type]
QUERY_NAMES = (
    "wait", "limit", "status", "cursor", "team", "priority", "created_after", "created_before",
    "level", "node_id", "q", "period", "group_by", "workflow_id",
)  # fmt: skip
WAITS = ("", "x", "-1", "0", "0.2", "1e309", "nan", "inf", "301", "1_0")
"""``wait`` is drawn from these only: a valid long wait would just make the fuzzing slow."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@pytest.fixture(scope="module")
def known(engine: EngineProcess) -> dict[str, str]:
    """A real workflow and a real finished run, so fuzzed ids sometimes hit something."""
    wf_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    engine.register({"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]})
    status, run = engine.start_execution(wf_id, {"n": 1}, wait=30)
    assert status == 200, run
    return {"workflow": wf_id, "execution": run["id"]}


def _bodies(known: dict[str, str]) -> st.SearchStrategy[bytes | None]:
    near_valid = st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from([known["workflow"], "", "x" * 300]) | st.text(max_size=12),
            "workflow_id": st.sampled_from([known["workflow"], ""]) | json_values,
            "input_data": json_values,
            "nodes": st.lists(
                st.fixed_dictionaries(
                    {
                        "id": st.text(max_size=6),
                        "type": st.sampled_from(["transform", "http", "code", "wait", "x"]),
                    },
                    optional={"config": json_values, "depends_on": json_values},
                ),
                max_size=3,
            )
            | json_values,
            "team": json_values,
            "role": st.sampled_from(["viewer", "operator", "admin", "root"]) | json_values,
            "timeout_seconds": json_values,
            "strategy": st.sampled_from(["exponential", "fixed", "none", "x"]),
            "max_attempts": json_values,
            "capacity": json_values,
            "tags": json_values,
        },
    )
    return st.one_of(
        st.none(),
        near_valid.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from(
            [b'{"workflow_id": "w", "input_data": "\\ud800"}', b'{"id": "\\udc00x", "nodes": []}']
        ),
    )


def _request(known: dict[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    ids = st.sampled_from(
        [known["workflow"], known["execution"], "exec_" + "0" * 32, "%00", "x" * 500]
    ) | st.text(min_size=1, max_size=30)
    return st.fixed_dictionaries(
        {
            "target": st.sampled_from(
                [("api", r) for r in API_ROUTES] + [("registry", r) for r in REGISTRY_ROUTES]
            ),
            "id": ids,
            "query": st.dictionaries(st.sampled_from(QUERY_NAMES), st.text(max_size=30), max_size=4),
            "wait": st.none() | st.sampled_from(WAITS),
            "headers": st.dictionaries(
                st.sampled_from(["X-Priority", "Idempotency-Key", "Content-Type", "Authorization"]),
                header_text,
                max_size=3,
            ),
            "body": _bodies(known),
        }
    )


def _send(method: str, url: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request; (status, raw body): answers are not all JSON (``/metrics``)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_no_input_gives_a_server_error(engine: EngineProcess, known: dict[str, str]) -> None:
    assert len(API_ROUTES) > 15 and len(REGISTRY_ROUTES) >= 4  # the routers were read
    seen: set[int] = set()

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_request(known))
    def one(req: dict[str, Any]) -> None:
        app, (method, pattern) = req["target"]
        base = engine.url if app == "api" else engine.registry_url
        path = pattern.replace("{id}", quote(req["id"], safe=""))
        query = dict(req["query"])
        query.pop("wait", None)
        if req["wait"] is not None:
            query["wait"] = req["wait"]
        url = f"{base}{path}" + (f"?{urlencode(query)}" if query else "")
        status, raw = _send(method, url, req["body"], req["headers"])
        seen.add(status)
        assert status < 500, (method, url, req["headers"], req["body"], raw)
        if status >= 400 and method != "HEAD":  # a HEAD answer has no body
            body = json.loads(raw)
            assert isinstance(body, dict) and body["error"]["type"] and body["error"]["message"], body

    one()
    assert any(s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen  # both sides were reached
    assert "unhandled error" not in engine.log_tail(100_000)
