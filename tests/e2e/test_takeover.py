"""Takeovers on the real broker: a zombie former owner is fenced, and a new owner carries on with
the waits, retries and extended deadlines the old one had pending. After each, every execution's
committed log is exactly once (see exactly_once.py), and no input offset was skipped (checked
when each engine stops)."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, partition_of
from tests.e2e.exactly_once import assert_exactly_once

pytestmark = pytest.mark.e2e

SLOW = "$sum([1..20000].($ * 2))"
"""About a third of a second of JSONata on this machine: the orchestrator is busy deciding."""


def wid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def owned_partitions(engine: EngineProcess) -> set[int]:
    """The partitions ``engine`` holds now, from its log of claims and releases."""
    owned: set[int] = set()
    for line in engine.log_path.read_text(errors="replace").splitlines():
        if match := re.search(r"(claimed|released) partition (\d+)", line):
            number = int(match.group(2))
            (owned.add if match.group(1) == "claimed" else owned.discard)(number)
    return owned


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def test_a_paused_owner_is_fenced_and_its_late_writes_are_never_visible(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    a = engine_factory()
    wf: dict[str, Any] = {
        "id": wid("zombie"),
        "nodes": [
            {"id": "slow", "type": "transform", "config": {"expression": SLOW}},
            {"id": "w", "type": "wait", "depends_on": ["slow"], "config": {"seconds": 1}},
            {"id": "out", "type": "transform", "depends_on": ["w"], "config": {"expression": "input.i * 3"}},
        ],
    }
    a.register(wf)
    ids = []
    for i in range(16):
        status, body = a.start_execution(wf["id"], {"i": i})
        assert status == 202, body
        ids.append(body["id"])
    time.sleep(1.0)  # a is deciding the slow transforms, batch after batch
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    b = a.sibling()
    try:
        b.start()  # ready once a's session expired and b has claimed every partition (fencing a)
        for i in range(16, 24):
            status, body = b.start_execution(wf["id"], {"i": i})
            assert status == 202, body
            ids.append(body["id"])
        for execution_id in ids:
            assert b.wait_status(execution_id, timeout=90)["status"] == "success"
        woke_at = a.log_path.stat().st_size
        a.proc.send_signal(signal.SIGCONT)
        # a wakes up inside the batch it was deciding (or with timers due). Which of its tasks runs
        # first is the event loop's choice: its commit, which the broker refuses (a is fenced), or
        # its consumer's heartbeat, which finds a's session over, and a lets go of the runs it held
        # without writing anything. Either way a had runs in flight, and wrote none of them.
        wait_until(
            lambda: a.metric_total("linkflow_orchestrator_fenced_total") >= 1 or _let_go(a, woke_at),
            60,
            "a tried a late commit, or let go of the runs it held",
        )
        # a rejoins the group as an ordinary member and works again
        for i in range(24, 30):
            status, body = a.start_execution(wf["id"], {"i": i}, wait=60)
            assert status == 200 and body["status"] == "success", body
            ids.append(body["id"])
        states = assert_exactly_once(b, ids)
        for i, execution_id in enumerate(ids):
            assert states[execution_id].nodes["out"].output == i * 3
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        b.stop()


def _let_go(engine: EngineProcess, since: int) -> bool:
    """Whether ``engine`` logged, after byte ``since``, releasing a partition that held runs."""
    with engine.log_path.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return any(int(n) > 0 for n in re.findall(r"released partition \d+ \((\d+) executions forgotten\)", text))


def _budget_seconds(status: dict[str, Any]) -> float:
    """The run's time budget as its status shows it: the deadline, counted from its start."""
    if not status.get("deadline_at") or not status.get("started_at"):
        return 0.0
    return (
        datetime.fromisoformat(status["deadline_at"]) - datetime.fromisoformat(status["started_at"])
    ).total_seconds()


def test_a_new_owner_carries_on_with_pending_waits_retries_and_deadlines(
    engine_factory: Callable[..., EngineProcess], target: TargetServer
) -> None:
    a = engine_factory()
    b = a.sibling()
    b.start()  # two owners: each holds some of the partitions
    flaky = f"/flaky/{uuid.uuid4().hex}"
    waits = {
        "id": wid("waits"),
        "nodes": [
            {"id": "w", "type": "wait", "config": {"seconds": 8}},
            {"id": "out", "type": "transform", "depends_on": ["w"], "config": {"expression": "input.i"}},
        ],
    }
    retries = {
        "id": wid("retries"),
        "nodes": [
            {
                "id": "h",
                "type": "http",
                "timeout_seconds": 5,
                "retry": {"max_attempts": 4, "initial_delay_seconds": 3, "multiplier": 1},
                # Off: four runs fail twice each on purpose, within seconds, at one origin; the
                # default breaker (5 failures in 30 s) would open and fail the later attempts fast
                # for 30 s, longer than these retries wait. This test is about takeover.
                "config": {"method": "POST", "url": f"{target.url}{flaky}?fail=2", "circuit_breaker": False},
            }
        ],
    }
    deadline = {
        "id": wid("deadline"),
        "timeout_seconds": 6,
        "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 10}}],
    }
    try:
        for wf in (waits, retries, deadline):
            a.register(wf)
        started: dict[str, list[str]] = {"waits": [], "retries": [], "extended": [], "kept": []}
        for i in range(4):
            for name, wf in (
                ("waits", waits),
                ("retries", retries),
                ("extended", deadline),
                ("kept", deadline),
            ):
                status, body = a.start_execution(wf["id"], {"i": i})
                assert status == 202, body
                started[name].append(body["id"])
                if name == "extended":  # at once, well before the 6 s deadline (a slow CI took >4 s)
                    status, body = call(
                        "PUT", f"{a.url}/api/executions/{body['id']}/timeout", {"timeout_seconds": 30}
                    )
                    assert status == 202, body
        for execution_id in [e for ids in started.values() for e in ids]:
            a.wait_status(execution_id, ("running",), timeout=10)  # started, and not ended
        for execution_id in started["extended"]:  # the new deadline is committed before the kill
            wait_until(lambda e=execution_id: _budget_seconds(a.get(e)) >= 30, 10, "the extended deadline")
        # everything is pending at the kill: waits, retry backoffs, deadlines (old and extended)
        for execution_id in [e for ids in started.values() for e in ids]:
            assert a.get(execution_id)["status"] == "running", a.get(execution_id)
        wait_until(lambda: len(target.hits(flaky)) >= 4, 10, "the first attempts of the retried calls")
        owned_by_a = owned_partitions(a)
        on_a = [e for ids in started.values() for e in ids if partition_of(e) in owned_by_a]
        assert on_a, f"no run lives on a's partitions {owned_by_a}: the kill would prove nothing"
        a.kill()
        done = {e: b.wait_status(e, timeout=90) for ids in started.values() for e in ids}
        for i, execution_id in enumerate(started["waits"]):
            assert done[execution_id]["status"] == "success"
            assert done[execution_id]["nodes"]["out"]["output"] == i
        for execution_id in started["retries"]:
            assert done[execution_id]["status"] == "success", done[execution_id]
            # two 503s, then 200; a call may repeat within one attempt when its task is delivered
            # again after the kill (at-least-once), so count calls, not attempts
            calls = [
                r for r in target.hits(flaky) if r["headers"]["Idempotency-Key"].startswith(execution_id)
            ]
            assert len(calls) >= 3 and done[execution_id]["nodes"]["h"]["attempts"] >= 2
        for execution_id in started["extended"]:
            assert done[execution_id]["status"] == "success", "the extended deadline held across the takeover"
        for execution_id in started["kept"]:
            assert done[execution_id]["status"] == "failed"
            assert "timed out" in done[execution_id]["history"][-1]["reason"]
        assert_exactly_once(b, done)
    finally:
        b.stop()
