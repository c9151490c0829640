"""Concurrency limits and team caps on the real broker (ADR 0030).

A local HTTP target counts the runs it serves at once (by the execution id of each request's
``Idempotency-Key``, so a task dispatched again after a kill is not counted twice). Each request
first waits until as many runs as the test expects were in flight together at least once (or a
generous time passed), then sleeps a little: a limit that let too few through would stall there
and fail the "reached" check, one that let too many through fails the "never more" check. Nothing
is asserted about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from linkflow_stream.core.events import EventType
from linkflow_stream.core.gate import GateRecord
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.dev.testing import EngineProcess, call, read_topic
from linkflow_stream.kafka.codec import default_codec
from tests.e2e.exactly_once import assert_exactly_once, committed_logs

pytestmark = pytest.mark.e2e

HOLD_SECONDS = 30.0
"""Longest a request waits for the expected number of runs in flight together."""


class Counting(ThreadingHTTPServer):
    """Counts the runs in flight, per group (the ``g`` query parameter) and in all."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Counted)
        self.lock = threading.Condition()
        self.in_flight: dict[str, set[str]] = {}
        self.peak: Counter[str] = Counter()
        self.arrivals: dict[str, list[str]] = {}
        """Per group, the runs in the order their first request arrived."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def enter(self, groups: list[str], run: str) -> None:
        with self.lock:
            for g in groups:
                self.in_flight.setdefault(g, set()).add(run)
                self.peak[g] = max(self.peak[g], len(self.in_flight[g]))
                order = self.arrivals.setdefault(g, [])
                if run not in order:
                    order.append(run)
            self.lock.notify_all()

    def hold(self, group: str, reach: int, within: float) -> None:
        """Wait until ``group`` had ``reach`` runs in flight together at least once."""
        with self.lock:
            self.lock.wait_for(lambda: self.peak[group] >= reach, within)

    def leave(self, groups: list[str], run: str) -> None:
        with self.lock:
            for g in groups:
                self.in_flight[g].discard(run)


class _Counted(BaseHTTPRequestHandler):
    server: Counting

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        run = self.headers.get("Idempotency-Key", "").split("/")[0]
        groups = [q["total"], *([q["g"]] if "g" in q else [])]
        self.server.enter(groups, run)
        data = json.dumps({"ok": True}).encode()
        try:
            self.server.hold(q["total"], int(q.get("reach", "1")), float(q.get("t", HOLD_SECONDS)))
            time.sleep(float(q.get("s", "0.3")))
        finally:
            self.server.leave(groups, run)
        with contextlib.suppress(OSError):  # a caller killed meanwhile (the kill -9 test)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


@pytest.fixture(scope="module")
def counting() -> Iterator[Counting]:
    server = Counting()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def workflow(
    wf_id: str,
    url: str,
    *,
    concurrency: dict[str, Any] | None = None,
    team: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    call = {"method": "POST", "url": url, "json": {}}
    body: dict[str, Any] = {
        "id": wf_id,
        "nodes": [
            {"id": "call", "type": "http", "timeout_seconds": timeout, "config": call},
            {"id": "done", "type": "transform", "depends_on": ["call"], "config": {"expression": "input"}},
        ],
    }
    if concurrency is not None:
        body["concurrency"] = concurrency
    if team is not None:
        body["team"] = team
    return body


def start_in_order(engine: EngineProcess, wf_id: str, inputs: list[dict[str, Any]]) -> list[str]:
    """Start runs one after another, each only once the previous is queued or running (its
    request to the gate committed), so the gate sees them in this order."""
    ids = []
    for input_data in inputs:
        status, body = engine.start_execution(wf_id, input_data)
        assert status == 202, body
        ids.append(body["id"])
        engine.wait_status(body["id"], ("queued", "running", "success"))
    return ids


def assert_admitted_in_order(engine: EngineProcess, ids: list[str]) -> None:
    """The runs started (were admitted) in the order given: their ``execution_started`` times
    never go back (runs admitted together share one; their tasks may reach the target in any
    order, as they come from different partitions)."""
    logs = committed_logs(engine, ids)
    at = [next(e.at for e in logs[i] if e.type is EventType.EXECUTION_STARTED) for i in ids]
    assert at == sorted(at), f"the runs were not admitted in arrival order: {at}"


def test_a_limit_of_two_runs_six_two_at_a_time_in_order(engine: EngineProcess, counting: Counting) -> None:
    wf_id = f"conc-{uuid.uuid4().hex[:8]}"
    url = f"{counting.url}/slow?total={wf_id}&reach=2&s=0.5"
    engine.register(workflow(wf_id, url, concurrency={"max": 2}))
    ids = start_in_order(engine, wf_id, [{"i": i} for i in range(6)])
    finished = [engine.wait_status(i, timeout=120) for i in ids]

    assert [b["status"] for b in finished] == ["success"] * 6
    assert counting.peak[wf_id] == 2, f"{counting.peak[wf_id]} runs at once under a limit of 2"
    assert_admitted_in_order(engine, ids)
    queued = [b for b in finished if any(h["to"] == "queued" for h in b["history"])]
    assert len(queued) == 6, "every run of a limited workflow passes through queued"
    assert [h["to"] for h in finished[-1]["history"]] == ["pending", "queued", "running", "success"]
    assert_exactly_once(engine, ids)


def test_each_key_value_has_its_own_limit(engine: EngineProcess, counting: Counting) -> None:
    wf_id = f"key-{uuid.uuid4().hex[:8]}"
    url = f"{counting.url}/slow?total={wf_id}&reach=2&s=0.3&g="
    body = workflow(wf_id, url, concurrency={"max": 1, "key": "customer"})
    # each customer's requests count in a group of their own, named by the customer
    body["nodes"][0]["input"] = {"url": f"'{url}' & input.customer"}
    engine.register(body)
    inputs = [{"customer": c, "n": n} for n in range(3) for c in ("acme", "globex")]
    ids = start_in_order(engine, wf_id, inputs)
    finished = [engine.wait_status(i, timeout=120) for i in ids]

    assert {b["status"] for b in finished} == {"success"}
    assert counting.peak["acme"] == 1
    assert counting.peak["globex"] == 1
    assert counting.peak[wf_id] == 2, "two customers' runs never ran side by side"
    for customer in ("acme", "globex"):
        mine = [i for i, inp in zip(ids, inputs, strict=True) if inp["customer"] == customer]
        assert counting.arrivals[customer] == mine


def test_a_queued_run_is_listed_as_queued_and_cancelling_it_takes_it_out_of_line(
    engine: EngineProcess, counting: Counting
) -> None:
    wf_id = f"cancel-{uuid.uuid4().hex[:8]}"
    # the first run holds its slot until the test has looked (it waits for a second run in
    # flight, which a limit of 1 never allows, for at most 10 s)
    url = f"{counting.url}/slow?total={wf_id}&reach=2&t=10&s=0"
    engine.register(workflow(wf_id, url, concurrency={"max": 1}))
    first, second, third = start_in_order(engine, wf_id, [{"n": n} for n in range(3)])
    assert engine.get(second)["status"] == "queued"
    status, page = call("GET", f"{engine.url}/api/executions?status=queued&workflow_id={wf_id}")
    assert status == 200, page
    assert {e["id"] for e in page["executions"]} == {second, third}
    # a queued run has nothing running to pause: a 409, not a 202 for a pause that never happens
    for control in ("pause", "recover"):
        status, body = call("POST", f"{engine.url}/api/executions/{third}/{control}")
        assert status == 409 and "queued" in body["error"]["message"], (control, body)
    # a timeout set while queued counts from its creation, and the answer says so
    status, body = call("PUT", f"{engine.url}/api/executions/{third}/timeout", {"timeout_seconds": 300})
    assert status == 202 and body["counted_from"].startswith("the execution's creation"), body
    status, body = call("POST", f"{engine.url}/api/executions/{second}/cancel")
    assert status == 202, body

    assert engine.wait_status(second)["status"] == "cancelled"
    assert engine.wait_status(first)["status"] == "success"
    assert engine.wait_status(third)["status"] == "success"
    assert counting.arrivals[wf_id] == [first, third], "the cancelled run was started"


def test_bad_concurrency_is_a_400_with_a_json_error(engine: EngineProcess) -> None:
    for concurrency in ({"max": 0}, {"max": 2, "key": "a +"}, {"max": 1, "extra": True}, "two"):
        wf = workflow(f"bad-{uuid.uuid4().hex[:8]}", "http://127.0.0.1:1/x", concurrency={"max": 1})
        wf["concurrency"] = concurrency
        status, body = call("POST", f"{engine.url}/api/workflows", wf)
        assert status == 400, body
        assert "concurrency" in body["error"]["message"], body


def test_a_team_cap_holds_each_team_and_lets_teams_share(
    engine_factory: Callable[..., EngineProcess], counting: Counting
) -> None:
    engine = engine_factory(LINKFLOW_TEAM_MAX_RUNNING="1")
    tag = uuid.uuid4().hex[:8]
    total = f"teams-{tag}"
    ids: dict[str, list[str]] = {}
    for team in ("red", "blue"):
        wf_id = f"{team}-{tag}"
        url = f"{counting.url}/slow?total={total}&reach=2&s=0.3&g={team}-{tag}"
        engine.register(workflow(wf_id, url, team=team))
        ids[team] = start_in_order(engine, wf_id, [{"n": n} for n in range(3)])
    finished = [engine.wait_status(i, timeout=120) for i in [*ids["red"], *ids["blue"]]]

    assert {b["status"] for b in finished} == {"success"}
    assert counting.peak[f"red-{tag}"] == 1
    assert counting.peak[f"blue-{tag}"] == 1
    assert counting.peak[total] == 2, "the two teams never ran side by side"
    assert counting.arrivals[f"red-{tag}"] == ids["red"]
    assert counting.arrivals[f"blue-{tag}"] == ids["blue"]


def gate_log(engine: EngineProcess) -> dict[str, GateRecord | None]:
    """The gate's committed changelog (one partition), latest value per key."""

    async def read() -> dict[str, GateRecord | None]:
        codec = default_codec()
        records = await read_topic(engine.bootstrap, f"{engine.prefix}linkflow.state.gate", partitions=1)
        latest = {(r.key or b"").decode(): r.value for r in records}
        return {k: codec.decode(v, GateRecord) if v is not None else None for k, v in latest.items()}

    return asyncio.run(read())


def admits(engine: EngineProcess) -> Counter[str]:
    codec = default_codec()
    records = asyncio.run(read_topic(engine.bootstrap, f"{engine.prefix}linkflow.commands"))
    commands = [codec.decode(r.value, ExecutionCommand) for r in records]
    return Counter(c.execution_id for c in commands if c.kind is CommandKind.ADMIT)


def test_kill_9_while_runs_wait_loses_none_starts_none_twice_and_keeps_the_limit(
    engine_factory: Callable[..., EngineProcess], counting: Counting
) -> None:
    engine = engine_factory()
    wf_id = f"crash-{uuid.uuid4().hex[:8]}"
    url = f"{counting.url}/slow?total={wf_id}&reach=2&s=2.0"
    # a short node timeout: the runs in flight at the kill are dispatched again when their
    # lease ends (timeout + the tests' 2 s grace)
    engine.register(workflow(wf_id, url, concurrency={"max": 2}, timeout=5))
    ids = start_in_order(engine, wf_id, [{"i": i} for i in range(8)])

    engine.kill()
    # proof that runs were waiting behind the limit at the kill: the gate's committed state
    held = {k: r for k, r in gate_log(engine).items() if r is not None and r.entry is not None}
    waiting = [r.entry.execution_id for r in held.values() if r.entry is not None and not r.entry.running]
    print(f"at the kill: {len(held) - len(waiting)} admitted, {len(waiting)} queued")
    assert len(waiting) >= 2, f"only {len(waiting)} runs were queued at the kill: {held}"

    engine.start()
    finished = [engine.wait_status(i, timeout=180) for i in ids]
    assert [b["status"] for b in finished] == ["success"] * 8
    assert counting.peak[wf_id] <= 2, f"{counting.peak[wf_id]} runs at once under a limit of 2"
    assert_admitted_in_order(engine, ids)

    logs = committed_logs(engine, ids)
    for execution_id, log in logs.items():
        started = [e for e in log if e.type is EventType.EXECUTION_STARTED]
        assert len(started) == 1, f"{execution_id} started {len(started)} times"
    assert admits(engine) == Counter({i: 1 for i in ids}), "an admission was lost or sent twice"
    assert_exactly_once(engine, ids)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [k for k, r in gate_log(engine).items() if r is not None and r.entry is not None]
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"the gate still holds ended runs: {left}"


@pytest.fixture
def pair(engine_factory: Callable[..., EngineProcess]) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    """Two instances of one engine; the second is stopped here (the factory stops the first)."""
    a = engine_factory()
    b = a.sibling()
    try:
        b.start()
        yield a, b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.send_signal(signal.SIGCONT)
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        b.stop()


def released(engine: EngineProcess) -> int:
    """How often ``engine`` let the gate go (it may hold it again later: the group decides)."""
    return engine.log_path.read_text(errors="replace").count("released the gate")


def owns_gate(engine: EngineProcess) -> bool:
    """Whether ``engine`` holds the gate now, from its log of claims and releases."""
    owned = False
    for line in engine.log_path.read_text(errors="replace").splitlines():
        if "claimed the gate" in line:
            owned = True
        elif "released the gate" in line:
            owned = False
    return owned


def test_a_takeover_of_the_gate_while_runs_wait_keeps_every_promise(
    pair: tuple[EngineProcess, EngineProcess], counting: Counting
) -> None:
    a, b = pair
    wf_id = f"takeover-{uuid.uuid4().hex[:8]}"
    url = f"{counting.url}/slow?total={wf_id}&reach=2&s=1.5"
    a.register(workflow(wf_id, url, concurrency={"max": 2}, timeout=5))
    ids = start_in_order(a, wf_id, [{"i": i} for i in range(8)])
    owners = [e for e in (a, b) if owns_gate(e)]
    assert len(owners) == 1, "exactly one instance holds the gate"
    owner, survivor = owners[0], (b if owners[0] is a else a)
    held = [r for r in gate_log(a).values() if r is not None and r.entry is not None]
    assert sum(not r.entry.running for r in held if r.entry is not None) >= 2, "too few runs waited"

    owner.kill()
    finished = [survivor.wait_status(i, timeout=180) for i in ids]
    assert [f["status"] for f in finished] == ["success"] * 8
    assert owns_gate(survivor)
    assert counting.peak[wf_id] <= 2, f"{counting.peak[wf_id]} runs at once under a limit of 2"
    assert_admitted_in_order(survivor, ids)
    assert admits(survivor) == Counter({i: 1 for i in ids}), "an admission was lost or sent twice"
    assert_exactly_once(survivor, ids)


def test_a_paused_gate_owner_loses_the_gate_and_admits_nothing_twice(
    pair: tuple[EngineProcess, EngineProcess], counting: Counting
) -> None:
    a, b = pair
    wf_id = f"zombie-{uuid.uuid4().hex[:8]}"
    url = f"{counting.url}/slow?total={wf_id}&reach=2&s=1.5"
    # The node's timeout outlasts the pause: frozen for the ~6 s of the takeover, a node the
    # paused owner was running would otherwise (rightly) fail by its own 5 s timeout on waking,
    # its answer unread, and which instance runs a node is not this test's to choose.
    a.register(workflow(wf_id, url, concurrency={"max": 2}, timeout=30))
    ids = start_in_order(a, wf_id, [{"i": i} for i in range(8)])
    owners = [e for e in (a, b) if owns_gate(e)]
    assert len(owners) == 1, "exactly one instance holds the gate"
    owner, survivor = owners[0], (b if owners[0] is a else a)
    held = [r for r in gate_log(a).values() if r is not None and r.entry is not None]
    assert sum(not r.entry.running for r in held if r.entry is not None) >= 2, "too few runs waited"

    assert owner.proc is not None
    released_before = released(owner)
    owner.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while not owns_gate(survivor):
            assert time.monotonic() < deadline, f"the gate was not taken over:\n{survivor.log_tail()}"
            time.sleep(0.2)
    finally:
        owner.proc.send_signal(signal.SIGCONT)  # the former owner goes on, a zombie until fenced
    finished = [survivor.wait_status(i, timeout=180) for i in ids]
    deadline = time.monotonic() + 60
    while released(owner) <= released_before:  # woken, it finds the gate gone (fenced or revoked)
        assert time.monotonic() < deadline, f"the former owner never let the gate go:\n{owner.log_tail()}"
        time.sleep(0.2)
    assert [f["status"] for f in finished] == ["success"] * 8, "\n".join(
        json.dumps(f, default=str) for f in finished if f["status"] != "success"
    )
    assert counting.peak[wf_id] <= 2, f"{counting.peak[wf_id]} runs at once under a limit of 2"
    assert_admitted_in_order(survivor, ids)
    assert admits(survivor) == Counter({i: 1 for i in ids}), "an admission was lost or sent twice"
    assert_exactly_once(survivor, ids)
