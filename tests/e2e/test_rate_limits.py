"""Rate limits (issue 11, item 3) through a running engine on the real broker: a node's
``rate_limit`` spaces its calls to a real HTTP server, parking throttled attempts on durable
timers; a team's start bucket answers 429 with ``Retry-After``."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import NodeResult
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, read_topic
from linkflow_stream.kafka.codec import default_codec

pytestmark = pytest.mark.e2e

PER_SECOND = 2.0
BURST = 1
RUNS = 10
JITTER_SECONDS = 0.2
"""Slack in the window bound for the two clocks the test reads: the engine takes a token just
before it calls, and the target records the request when it arrives, after a connection set up
in between; two calls' set-up times may differ by this much. No bound on the engine's speed."""

TEAM_BURST = RUNS
"""Enough for the node test's starts; the start test spends it on another team, then asks once more."""


@pytest.fixture(scope="module")
def engine(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine with a team start bucket (``TEAM_BURST`` at once, then one a minute)."""
    e = EngineProcess(
        bootstrap=kafka,
        workdir=Path(tmp_path_factory.mktemp("rate-limits")),
        extra_env={
            "LINKFLOW_TEAM_STARTS_PER_SECOND": str(1 / 60),
            "LINKFLOW_TEAM_STARTS_BURST": str(TEAM_BURST),
        },
    )
    e.start()
    yield e
    e.stop()


def window_excess(times: list[float], per_second: float, burst: int, slack: float) -> list[str]:
    """Every window [t_i, t_j] of the sorted call times holding more calls than the bucket allows."""
    times = sorted(times)
    problems = []
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            allowed = burst + per_second * (times[j] - times[i] + slack)
            if j - i + 1 > allowed:
                problems.append(
                    f"{j - i + 1} calls within {times[j] - times[i]:.3f}s (at most {allowed:.2f})"
                )
    return problems


def test_the_window_check_bites() -> None:
    assert window_excess([0.0, 0.1, 0.2], 2.0, 1, JITTER_SECONDS)
    assert not window_excess([0.0, 0.5, 1.0, 1.5], 2.0, 1, JITTER_SECONDS)


def test_a_node_rate_limit_spaces_calls_and_every_run_succeeds(
    engine: EngineProcess, target: TargetServer
) -> None:
    path = f"/limited/{uuid.uuid4().hex[:8]}"
    wf = {
        "id": f"rl-{uuid.uuid4().hex[:6]}",
        "team": "nodes",
        "nodes": [
            {
                "id": "h",
                "type": "http",
                "config": {"url": f"{target.url}{path}", "method": "GET"},
                "rate_limit": {"per_second": PER_SECOND, "burst": BURST, "key": "input.tenant"},
            }
        ],
    }
    engine.register(wf)
    ids = []
    for i in range(RUNS):
        status, body = call(
            "POST",
            f"{engine.url}/api/executions",
            {"workflow_id": wf["id"], "input_data": {"tenant": "acme", "i": i}},
        )
        assert status == 202, body
        ids.append(body["id"])
    finished = [engine.wait_status(run_id, timeout=120) for run_id in ids]
    assert [run["status"] for run in finished] == ["success"] * RUNS

    hits = target.hits(path)
    first = min(h["at"] for h in hits)
    print(
        "call times (s after the first):",
        [round(h["at"] - first, 3) for h in sorted(hits, key=lambda h: h["at"])],
    )
    assert len(hits) == RUNS  # each run called once: a throttled attempt never reached the target
    problems = window_excess([h["at"] for h in hits], PER_SECOND, BURST, JITTER_SECONDS)
    assert not problems, problems

    throttled_runs = 0
    for run_id in ids:
        status, events = call("GET", f"{engine.url}/api/executions/{run_id}/events")
        assert status == 200, events
        kinds = [e["type"] for e in events["events"]]
        starts = [e for e in events["events"] if e["type"] == "node_started"]
        assert {e["attempt"] for e in starts} == {1}, "a throttle wait spent an attempt"
        assert "node_failed" not in kinds and "node_retry_scheduled" not in kinds
        waits = [e for e in events["events"] if e["type"] == "node_throttled"]
        if waits:
            throttled_runs += 1
            # each wait is followed by a dispatch of the same attempt, and shows in the logs
            assert len(starts) == len(waits) + 1
            status, logs = call("GET", f"{engine.url}/api/executions/{run_id}/logs")
            assert status == 200, logs
            assert any("waits for its rate limit" in line["message"] for line in logs["logs"])
    print(f"{throttled_runs} of {RUNS} runs waited for a token")
    # burst 1 and ten starts within far less than the 4.5 s the bucket needs: most runs waited
    assert throttled_runs >= 1
    assert engine.metric_total("linkflow_node_throttled_total") >= throttled_runs


def start(engine: EngineProcess, workflow_id: str, key: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    req = urllib.request.Request(
        f"{engine.url}/api/executions",
        data=json.dumps({"workflow_id": workflow_id, "input_data": {}}).encode(),
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_a_team_over_its_start_rate_gets_429_with_retry_after(engine: EngineProcess) -> None:
    def workflow(team: str) -> str:
        wf = {
            "id": f"starts-{uuid.uuid4().hex[:6]}",
            "team": team,
            "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}],
        }
        engine.register(wf)
        return str(wf["id"])

    busy, other = workflow("busy"), workflow("quiet")
    before = engine.metric_total("linkflow_team_starts_throttled_total")
    first = start(engine, busy, key="k-first")
    assert first[0] == 202, first
    for _ in range(TEAM_BURST - 1):
        assert start(engine, busy)[0] == 202
    status, headers, body = start(engine, busy)
    assert status == 429, body
    assert body["error"]["type"] == "rate_limited"
    assert "busy" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    assert engine.metric_total("linkflow_team_starts_throttled_total") == before + 1
    # a repeated Idempotency-Key starts nothing, so it takes no token and is answered as before
    replay = start(engine, busy, key="k-first")
    assert replay[0] == 200 and replay[2]["id"] == first[2]["id"], replay
    # another team has its own bucket
    assert start(engine, other)[0] == 202


def test_two_instances_share_a_node_rate_limit(
    engine_factory: Callable[..., EngineProcess], target: TargetServer
) -> None:
    """Two engines in one group, both executing: each applies half the rate, so together they
    keep per_second * t + max(burst, n) (ADR 0031), with n = 2 live instances."""
    a = engine_factory()
    b = a.sibling()
    b.start()
    try:
        for engine in (a, b):  # each counts both before any run starts
            deadline = time.monotonic() + 30
            while call("GET", f"{engine.registry_url}/api/workers/status")[1].get("alive") != 2:
                assert time.monotonic() < deadline, "the instances never saw each other alive"
                time.sleep(0.2)
        path = f"/shared/{uuid.uuid4().hex[:8]}"
        wf = {
            "id": f"rl2-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {
                    "id": "h",
                    "type": "http",
                    "config": {"url": f"{target.url}{path}", "method": "GET"},
                    "rate_limit": {"per_second": PER_SECOND, "burst": BURST},
                }
            ],
        }
        a.register(wf)
        deadline = time.monotonic() + 10
        while call("GET", f"{b.url}/api/workflows/{wf['id']}")[0] != 200:
            assert time.monotonic() < deadline, "instance b never saw the workflow"
            time.sleep(0.1)
        ids = []
        for i in range(12):
            status, body = (a, b)[i % 2].start_execution(wf["id"], {"i": i})
            assert status == 202, body
            ids.append(body["id"])
        assert [a.wait_status(run_id, timeout=120)["status"] for run_id in ids] == ["success"] * 12

        results = asyncio.run(read_topic(a.bootstrap, a.settings().topic(topic_names.RESULTS)))
        codec = default_codec()
        ran = [codec.decode(r.value, NodeResult) for r in results]
        workers = {r.worker_id for r in ran if r.ok and r.execution_id in ids}
        assert len(workers) == 2, f"both instances must have called out to test the split: {workers}"

        times = sorted(h["at"] for h in target.hits(path))
        assert len(times) == 12
        print("two instances, call times:", [round(t - times[0], 3) for t in times])
        problems = window_excess(times, PER_SECOND, max(BURST, 2), JITTER_SECONDS)
        assert not problems, problems
    finally:
        b.stop()
