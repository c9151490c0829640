"""Retries that behave (issue 11, item 7) on a real engine and broker, as a run's history shows
them: a jittered retry's ``node_retry_scheduled`` event says its delay, ``retry_on`` leaves a
class it does not list unretried (and says so), and a code node that ignores SIGTERM is killed
after its grace, with that in its ``timeout`` failure.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest

from linkflow_stream.core.workflow import RetryPolicy
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call
from linkflow_stream.nodes.sandbox import probe

pytestmark = pytest.mark.e2e

IGNORES_SIGTERM = (
    "import signal, time\n"
    "def main(data):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    print('ignoring SIGTERM', flush=True)\n"
    "    while True:\n"
    "        time.sleep(0.05)\n"
)


def events(engine: EngineProcess, execution_id: str, type_: str) -> list[dict[str, Any]]:
    status, body = call("GET", f"{engine.url}/api/executions/{execution_id}/events?type={type_}")
    assert status == 200, body
    return list(body["events"])


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_a_jittered_retry_says_its_delay_and_retry_on_filters(
    engine: EngineProcess, target: TargetServer
) -> None:
    tag = uuid.uuid4().hex[:6]
    policy = {"max_attempts": 3, "initial_delay_seconds": 1, "jitter": 0.5, "retry_on": ["http_5xx"]}
    engine.register(
        {
            "id": f"retry-{tag}",
            "nodes": [
                {
                    "id": "flaky",
                    "type": "http",
                    "config": {"url": f"{target.url}/flaky/{tag}?fail=1"},
                    "retry": policy,
                },
            ],
        }
    )
    engine.register(
        {
            "id": f"noretry-{tag}",
            "nodes": [
                {
                    "id": "flaky",
                    "type": "http",
                    "config": {"url": f"{target.url}/flaky/n{tag}?fail=1"},
                    "retry": {**policy, "retry_on": ["timeout"]},
                },
            ],
        }
    )
    _, started = engine.start_execution(f"retry-{tag}")
    run = engine.wait_status(started["id"])
    assert run["status"] == "success"
    (scheduled,) = events(engine, run["id"], "node_retry_scheduled")
    delay = RetryPolicy.model_validate(policy).retry_delay(1, run["id"], "flaky")
    assert 0.5 <= delay <= 1.0
    assert scheduled["reason"] == f"retry in {delay:.3f}s (backoff 1.000s, jitter -{1.0 - delay:.3f}s)"
    assert abs(seconds_between(scheduled["at"], scheduled["due_at"]) - delay) < 0.002  # ms on the wire
    assert scheduled["error"]["error_class"] == "http_5xx"

    _, started = engine.start_execution(f"noretry-{tag}")
    run = engine.wait_status(started["id"])
    assert run["status"] == "failed"
    assert events(engine, run["id"], "node_retry_scheduled") == []
    (failed,) = events(engine, run["id"], "node_failed")
    assert failed["reason"] == "not retried: http_5xx is not in retry_on (timeout)"
    status, body = call("POST", f"{engine.url}/api/executions/{run['id']}/test-retry")
    assert status == 200, body
    assert body["nodes"]["flaky"]["would_retry"] is False
    assert body["nodes"]["flaky"]["policy"]["retry_on"] == ["timeout"]


def test_a_code_node_that_ignores_sigterm_is_killed_and_the_history_says_so(engine: EngineProcess) -> None:
    checked = probe()
    if not checked.works:
        pytest.skip(f"bubblewrap does not work here: {checked.problem}")
    tag = uuid.uuid4().hex[:6]
    engine.register(
        {
            "id": f"stubborn-{tag}",
            "nodes": [
                {
                    "id": "stubborn",
                    "type": "code",
                    "timeout_seconds": 4,
                    "config": {"source": IGNORES_SIGTERM, "kill_grace_seconds": 1},
                    "retry": {"max_attempts": 2, "initial_delay_seconds": 0.1, "retry_on": ["timeout"]},
                }
            ],
        }
    )
    _, started = engine.start_execution(f"stubborn-{tag}")
    run = engine.wait_status(started["id"], timeout=90)
    assert run["status"] == "failed"
    stopped = (
        "the code did not finish within the node's timeout of 4s; "
        "killed (SIGKILL): it was still running 1s after SIGTERM"
    )
    (retried,) = events(engine, run["id"], "node_retry_scheduled")
    (failed,) = events(engine, run["id"], "node_failed")
    for event in (retried, failed):
        assert event["error"] == {"error_class": "timeout", "message": stopped, "retryable": True}
        assert event["logs"]["stdout"] == "ignoring SIGTERM\n"
    status, logs = call("GET", f"{engine.url}/api/executions/{run['id']}/logs?level=error")
    assert status == 200, logs
    assert any("killed (SIGKILL)" in line["message"] for line in logs["logs"]), logs


def test_a_retry_policy_of_unknown_shape_is_a_400(engine: EngineProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    node = {"id": "h", "type": "http", "config": {"url": "https://example.org/"}}
    for retry, words in (
        ({"max_attempts": 2, "retry_on": "timeout"}, "retry.retry_on: Input should be a valid array"),
        ({"max_attempts": 2, "retry_on": ["http_4xx"]}, "retry.retry_on: 'http_4xx' is never retried"),
        ({"max_attempts": 2, "retry_on": ["nope"]}, "retry.retry_on: 'nope' is not a failure class"),
        ({"max_attempts": 2, "jitter": 2}, "retry.jitter: Input should be less than or equal to 1"),
        ({"max_attempts": "2"}, "retry.max_attempts: Input should be a valid integer"),
    ):
        status, body = call(
            "POST", f"{engine.url}/api/workflows", {"id": f"bad-{tag}", "nodes": [{**node, "retry": retry}]}
        )
        assert status == 400, body
        assert body["error"]["type"] == "validation"
        assert words in body["error"]["message"]
    engine.register({"id": f"ok-{tag}", "nodes": [node]})
    status, body = call(
        "PUT", f"{engine.url}/api/workflows/ok-{tag}/retry", {"retry_on": ["lease_expired", "bogus"]}
    )
    assert status == 400, body
    assert "retry_on: 'bogus' is not a failure class" in body["error"]["message"]
    status, body = call(
        "PUT",
        f"{engine.url}/api/workflows/ok-{tag}/retry",
        {"max_attempts": 3, "jitter": 0.5, "retry_on": ["timeout"]},
    )
    assert status == 200, body
    assert (body["retry"]["jitter"], body["retry"]["retry_on"]) == (0.5, ["timeout"])
