"""The durable read model on the running engine: restarts resume from the stored positions, a kill
-9 in the middle of folding leaves a store equal to a replay from offset 0, queries filter and
page through indexes, finished runs leave after their retention, and several instances share
one PostgreSQL read model."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.dev.testing import ROOT, EngineProcess, call, read_events
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.consumers import log_ends
from projections.status import REVERSE_LINKS
from tests.postgres import PostgresCluster, postgres_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    yield from postgres_cluster()


async def produce(engine: EngineProcess, topic: str, key: bytes, value: bytes) -> None:
    """One record to the logical ``topic``, as any Kafka client would write it."""
    producer = AIOKafkaProducer(bootstrap_servers=engine.bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(engine.settings().topic(topic), value, key=key)
    finally:
        await producer.stop()


async def records_after(bootstrap: str, positions: dict[tuple[str, int], int], topics: list[str]) -> int:
    """Committed records (no transaction markers) of ``topics`` from ``positions`` to the end."""
    ends = await log_ends(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for (t, p), end in ends.items() if end > positions.get((t, p), 0)]
        if not partitions:
            return 0
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, positions.get((tp.topic, tp.partition), 0))
        count = 0
        while [tp for tp in partitions if await consumer.position(tp) < ends[(tp.topic, tp.partition)]]:
            batches = await consumer.getmany(timeout_ms=500)
            count += sum(
                1 for tp, got in batches.items() for r in got if r.offset < ends[(tp.topic, tp.partition)]
            )
        return count
    finally:
        await consumer.stop()


def wid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def linkflow(
    engine: EngineProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkflow_stream.cli", *args],
        cwd=ROOT,
        env={**engine.env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def chain(name: str, *, wait: float = 0.0, team: str | None = None) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "a", "type": "transform", "config": {"expression": "input.n * 2"}}]
    last = "a"
    if wait:
        nodes.append({"id": "w", "type": "wait", "depends_on": ["a"], "config": {"seconds": wait}})
        last = "w"
    nodes.append(
        {"id": "b", "type": "transform", "depends_on": [last], "config": {"expression": "nodes.a + 1"}}
    )
    wf: dict[str, Any] = {"id": wid(name), "nodes": nodes}
    if team:
        wf["team"] = team
    return wf


def stored_positions(engine: EngineProcess) -> dict[tuple[str, int], int]:
    with sqlite3.connect(engine.data_dir / f"{engine.prefix}views.sqlite3") as conn:
        return {(t, p): o for t, p, o in conn.execute("SELECT topic, part, next_offset FROM view_offsets")}


def stored_statuses(engine: EngineProcess) -> dict[str, str]:
    with sqlite3.connect(engine.data_dir / f"{engine.prefix}views.sqlite3") as conn:
        return dict(conn.execute("SELECT id, status FROM executions"))


class Load:
    """Callers starting runs in a loop until stopped; the ids the engine accepted."""

    def __init__(self, engine: EngineProcess, workflow_id: str, callers: int = 6) -> None:
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(engine, workflow_id), daemon=True)
            for _ in range(callers)
        ]

    def _run(self, engine: EngineProcess, workflow_id: str) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                status, body = call(
                    "POST",
                    f"{engine.url}/api/executions",
                    {"workflow_id": workflow_id, "input_data": {"n": n}},
                    timeout=5,
                )
            except OSError:
                continue  # the engine was killed under us: this start may or may not have landed
            if status == 202:
                self.accepted.append(body["id"])

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def test_a_kill_while_folding_leaves_a_store_equal_to_a_replay_from_offset_0(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory()
    wf = chain("crash", wait=1.0)
    engine.register(wf)
    for n in range(3):  # ended before the load: the stored positions are past their records
        status, body = engine.start_execution(wf["id"], {"n": -n}, wait=10)
        assert status == 200 and body["status"] == "success", body
    with Load(engine, wf["id"]) as load:
        deadline = time.monotonic() + 30
        while len(load.accepted) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        engine.kill()
    assert len(load.accepted) >= 60, "too little load to prove anything"
    # Something was in flight when it struck: records on the log the view had not stored yet, and
    # accepted runs the store does not show ended (unfinished, or no row yet: ADR 0063).
    topics = [f"{engine.prefix}linkflow.events"]
    ends = asyncio.run(log_ends(engine.bootstrap, topics))
    stored = stored_positions(engine)
    behind = sum(end - stored.get(tp, 0) for tp, end in ends.items())
    statuses = stored_statuses(engine)
    unfinished = [i for i in load.accepted if statuses.get(i) in (None, "pending", "running")]
    assert behind > 0 or unfinished, "the view had nothing left to fold at the kill"
    assert unfinished, "no run was in flight at the kill"

    view_topics = [f"{engine.prefix}linkflow.{t}" for t in ("events", "requests.high", "requests.normal")]
    view_topics += [f"{engine.prefix}linkflow.{t}" for t in ("requests.low", "dlq")]
    assert sum(stored.values()) > 0, "nothing stored before the kill: a resume would not show"

    engine.start()
    for execution_id in load.accepted:
        assert engine.wait_status(execution_id, timeout=60)["status"] == "success"
    after_kill = asyncio.run(records_after(engine.bootstrap, stored, view_topics))
    deadline = time.monotonic() + 10
    while (
        engine.metric_total("linkflow_view_records_folded_total") < after_kill and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert engine.metric_total("linkflow_view_records_folded_total") == after_kill, (
        "the restart read on from the stored positions: every record after them, once"
    )
    engine.stop()

    replay = linkflow(engine, "replay", "status")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert (
        f"{len(stored_statuses(engine))} equal, 0 different, 0 with different log lines, 0 missing"
        in replay.stdout
    )
    assert "0 moved on" in replay.stdout, "the engine was stopped: every row is compared"


def test_a_stop_writes_the_rows_of_live_runs_and_the_restart_folds_nothing_again(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """ADR 0063: with a row delay of a minute only the stop can have written the live run's row;
    the stored positions then reach the log's end, and the restart folds no record again."""
    engine = engine_factory(LINKFLOW_VIEWS_ROW_DELAY_SECONDS="60")
    wf = chain("stop-live", wait=60)
    engine.register(wf)
    status, body = engine.start_execution(wf["id"], {"n": 1})
    assert status == 202, body
    running = engine.wait_status(body["id"], ("running",), timeout=30)
    assert running["nodes"]["w"]["status"] == "running", "in flight at the stop: waiting on its timer"
    assert body["id"] not in stored_statuses(engine), "the row waits for the delay"
    engine.stop()
    assert stored_statuses(engine)[body["id"]] == "running"
    view_topics = [f"{engine.prefix}linkflow.{t}" for t in ("events", "requests.normal")]
    stored = stored_positions(engine)
    assert asyncio.run(records_after(engine.bootstrap, stored, view_topics)) == 0, "positions at the end"
    engine.start()
    assert engine.metric_total("linkflow_view_records_folded_total") == 0, "nothing folded again"
    assert engine.get(body["id"])["status"] == "running"


def test_a_restart_resumes_and_reads_every_run_from_the_store(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory(LINKFLOW_VIEWS_FINISHED_CACHE="0")
    wf = chain("restart")
    engine.register(wf)
    ids = []
    for n in range(20):
        status, body = engine.start_execution(wf["id"], {"n": n}, wait=10)
        assert status == 200 and body["status"] == "success", body
        ids.append(body["id"])
    before = {i: engine.get(i) for i in ids}
    rows = engine.metric_total("linkflow_view_rows_written_total")
    assert 20 <= rows <= 25, (
        f"{rows} rows for 20 quick runs: once each at its end, not at every batch (ADR 0063)"
    )
    engine.stop()
    engine.start()
    assert engine.metric_total("linkflow_view_records_folded_total") == 0, "nothing new: nothing folded"
    for execution_id in ids:
        assert engine.get(execution_id) == before[execution_id]
    status, body = call("GET", f"{engine.url}/api/executions?workflow_id={wf['id']}&limit=100")
    assert status == 200 and [r["id"] for r in body["executions"]] == ids[::-1]
    status, logs = call("GET", f"{engine.url}/api/executions/{ids[0]}/logs?q=succeeded")
    assert status == 200 and logs["count"] == 3, logs
    status, cost = call("GET", f"{engine.url}/api/costs/report?period=day")
    assert status == 200
    assert {w["workflow_id"]: w["executions"] for w in cost["workflows"]}[wf["id"]] == 20


def test_a_waited_start_is_answered_with_the_body_its_row_keeps(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """The ``?wait`` answer is the run's body as JSON, the text its stored row keeps (ADR 0064):
    the same as ``GET`` and a page of runs read from the row (no finished run is kept in memory)."""
    engine = engine_factory(LINKFLOW_VIEWS_FINISHED_CACHE="0")
    wf = chain("answered")
    engine.register(wf)
    request = urllib.request.Request(
        f"{engine.url}/api/executions?wait=30",
        data=json.dumps({"workflow_id": wf["id"], "input_data": {"n": 4}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **engine.auth()},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
        body = json.loads(answer.read())
    assert body["status"] == "success" and body["nodes"]["b"]["output"] == 9, body
    read = engine.get(body["id"])  # which also lists the runs linking to it (none here)
    assert {field: read.pop(field) for field in REVERSE_LINKS.values()} == {"reruns": [], "children": []}
    assert read == body
    status, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf['id']}")
    assert status == 200 and page["executions"] == [body], page


def test_queries_filter_and_page_newest_first(engine_factory: Callable[..., EngineProcess]) -> None:
    engine = engine_factory()
    ops, web = chain("ops", team="ops"), chain("web", team="web")
    for wf in (ops, web):
        engine.register(wf)
    failing = {
        "id": wid("failing"),
        "team": "ops",
        "nodes": [{"id": "x", "type": "transform", "config": {"expression": "$error('no')"}}],
    }
    engine.register(failing)
    started: list[tuple[str, str, str]] = []  # (id, workflow, priority)
    for n in range(6):
        for wf, priority in ((ops, "high"), (web, "low"), (failing, "normal")):
            status, body = engine.start_execution(wf["id"], {"n": n}, priority=priority, wait=10)
            assert status == 200, body
            started.append((body["id"], wf["id"], priority))
    newest_first = [s[0] for s in reversed(started)]

    def page(query: str) -> dict[str, Any]:
        status, body = call("GET", f"{engine.url}/api/executions?{query}")
        assert status == 200, body
        return dict(body)

    seen: list[str] = []
    cursor = ""
    while True:
        body = page(f"limit=5{cursor}")
        seen += [r["id"] for r in body["executions"]]
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == newest_first
    assert [r["id"] for r in page("status=failed")["executions"]] == [
        s[0] for s in reversed(started) if s[1] == failing["id"]
    ]
    assert {r["workflow_id"] for r in page("team=ops")["executions"]} == {ops["id"], failing["id"]}
    assert [r["id"] for r in page(f"priority=low&workflow_id={web['id']}")["executions"]] == [
        s[0] for s in reversed(started) if s[2] == "low"
    ]
    middle = engine.get(newest_first[9])["created_at"]
    after = page(f"created_after={middle}")["executions"]
    assert [r["id"] for r in after] == newest_first[:10]
    before = page(f"created_before={middle}&status=success")["executions"]
    workflow_of = {s[0]: s[1] for s in started}
    assert [r["id"] for r in before] == [i for i in newest_first[10:] if workflow_of[i] != failing["id"]]
    whole, short = page("limit=5&team=ops"), page("limit=5&team=ops&view=summary")
    assert [r["id"] for r in short["executions"]] == [r["id"] for r in whole["executions"]]
    assert short["next_cursor"] == whole["next_cursor"]
    for body, brief in zip(whole["executions"], short["executions"], strict=True):
        assert body["input_data"] is not None and body["nodes"]
        assert brief == {k: v for k, v in body.items() if k not in ("input_data", "nodes", "history")}
    for bad in (
        "view=brief",
        "limit=%C2%B2",
        "limit=0",
        "cursor=nonsense",
        "created_after=yesterday",
        "priority=urgent",
        "status=done",
    ):
        status, body = call("GET", f"{engine.url}/api/executions?{bad}")
        assert status == 400 and body["error"]["type"] == "validation", (bad, body)
    status, body = call("GET", f"{engine.url}/api/executions/{newest_first[0]}/logs?limit=%C2%B2")
    assert status == 400, body


def test_finished_runs_leave_after_their_retention_and_running_ones_stay(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    retention = 3.0  # seconds
    engine = engine_factory(
        LINKFLOW_RETENTION_DAYS=str(retention / 86_400), LINKFLOW_RETENTION_CHECK_SECONDS="0.5"
    )
    quick, slow = chain("quick"), chain("slow", wait=30)
    engine.register(quick)
    engine.register(slow)
    status, done = engine.start_execution(quick["id"], {"n": 1}, wait=10)
    assert status == 200 and done["status"] == "success"
    status, running = engine.start_execution(slow["id"], {"n": 1})
    assert status == 202
    engine.wait_status(running["id"], ("running",))
    deadline = time.monotonic() + 20
    while call("GET", f"{engine.url}/api/executions/{done['id']}")[0] == 200:
        assert time.monotonic() < deadline, "the finished run outlived its retention"
        time.sleep(0.2)
    finished_at = datetime.fromisoformat(done["finished_at"].replace("Z", "+00:00"))
    assert datetime.now(UTC) - finished_at >= timedelta(seconds=retention), "deleted before its time"
    assert engine.get(running["id"])["status"] == "running"
    assert engine.metric_total("linkflow_view_expired_total") >= 1
    assert done["id"] not in stored_statuses(engine)


def test_two_instances_share_one_postgresql_read_model(
    engine_factory: Callable[..., EngineProcess], postgres: PostgresCluster
) -> None:
    url = postgres.fresh_url()
    a = engine_factory(LINKFLOW_VIEWS_URL=url)
    b = a.sibling()
    b.start()
    try:
        wf = chain("shared")
        a.register(wf)
        ids = []
        for n in range(10):
            status, body = a.start_execution(wf["id"], {"n": n}, wait=10)
            assert status == 200 and body["status"] == "success"
            ids.append(body["id"])
        for execution_id in ids:
            assert b.wait_status(execution_id, timeout=10)["nodes"]["b"]["output"] is not None
        schema = url.rsplit("search_path=", 1)[1]
        rows = postgres.psql(
            f"SELECT COUNT(*) FROM \"{schema}\".executions WHERE workflow_id = '{wf['id']}'"  # noqa: S608 - our own ids
        )
        assert rows.strip() == "10", "each run is stored once, whoever folded it"
        b.stop()
        b.start()
        assert b.metric_total("linkflow_view_records_folded_total") == 0, (
            "b resumed from the shared positions"
        )
        assert [
            r["id"] for r in call("GET", f"{b.url}/api/executions?workflow_id={wf['id']}")[1]["executions"]
        ] == ids[::-1]
        status, short = call("GET", f"{b.url}/api/executions?workflow_id={wf['id']}&view=summary")
        assert status == 200 and [r["id"] for r in short["executions"]] == ids[::-1]
        assert all("nodes" not in r and r["status"] == "success" for r in short["executions"])
        a.stop()
        b.stop()
        replay = linkflow(a, "replay", "status")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "0 different, 0 with different log lines, 0 missing" in replay.stdout
    finally:
        b.stop()


def test_a_start_repeated_with_its_idempotency_key_names_the_first_run(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory(LINKFLOW_VIEWS_FINISHED_CACHE="0")
    ops, web = chain("idem-ops", team="ops"), chain("idem-web", team="web")
    ops_other = chain("idem-ops-other", team="ops")
    for wf in (ops, web, ops_other):
        engine.register(wf)
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    start = f"{engine.url}/api/executions"
    status, first = call("POST", start, {"workflow_id": ops["id"], "input_data": {"n": 1}}, headers=key)
    assert status == 202, first
    status, again = call("POST", start, {"workflow_id": ops["id"], "input_data": {"n": 1}}, headers=key)
    assert status == 200 and again["id"] == first["id"], again
    done = engine.wait_status(first["id"])
    status, later = call(
        "POST", f"{start}?wait=5", {"workflow_id": ops["id"], "input_data": {"n": 1}}, headers=key
    )
    # the run's body; GET alone adds the runs that link to it (reruns, children)
    done = {k: v for k, v in done.items() if k not in REVERSE_LINKS.values()}
    assert status == 200 and later == done, "a repeat after the run ended answers with the run"
    status, other_team = call("POST", start, {"workflow_id": web["id"], "input_data": {"n": 1}}, headers=key)
    assert status == 202 and other_team["id"] != first["id"], "keys are per team"
    # the key with another start of the same team: neither the first run nor a silent drop
    for other_start in (
        {"workflow_id": ops_other["id"], "input_data": {"n": 1}},  # a webhook of another workflow, say
        {"workflow_id": ops["id"], "input_data": {"n": 2}},
    ):
        status, body = call("POST", f"{start}?wait=5", other_start, headers=key)
        assert status == 409 and body["error"]["type"] == "conflict", (other_start, body)
        assert first["id"] not in body["error"]["message"] and ops["id"] not in body["error"]["message"]
    created = [
        e for e in asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}linkflow.events"))
        if e.execution_id == first["id"] and e.type.value == "execution_created"
    ]  # fmt: skip
    assert len(created) == 1, "three starts with one key made one run"
    for bad in ("", "x" * 256, "caf\u00e9"):
        status, body = call("POST", start, {"workflow_id": ops["id"]}, headers={"Idempotency-Key": bad})
        assert status == 400 and body["error"]["type"] == "validation", (bad, body)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_start_request_the_orchestrator_dead_letters_ends_its_run_failed(
    engine_factory: Callable[..., EngineProcess], request: pytest.FixtureRequest, store: str
) -> None:
    """A start request written straight to a request topic, with a workflow the API would have
    refused (a node depends on one that does not exist), cannot be decided: the orchestrator
    dead-letters it and the run never starts. The views had accepted it as pending, and it stayed
    pending for ever, counted as queued against its team, across restarts."""
    env = {"LINKFLOW_VIEWS_FINISHED_CACHE": "0"}
    if store == "postgresql":
        env["LINKFLOW_VIEWS_URL"] = request.getfixturevalue("postgres").fresh_url()
    engine = engine_factory(**env)
    wf = WorkflowDefinition(
        id=wid("refused"),
        created_at=datetime.now(UTC),
        nodes=(NodeDefinition(id="a", type="transform", depends_on=["missing"], config={"expression": "1"}),),
    )
    execution_id = f"exec_{uuid.uuid4().hex}"
    refused = StartExecution(execution_id=execution_id, workflow=wf, input={}, requested_at=datetime.now(UTC))
    value = default_codec().encode(refused)
    asyncio.run(produce(engine, "linkflow.requests.normal", execution_id.encode(), value))
    body = engine.wait_status(execution_id, timeout=60)
    assert body["status"] == "failed", body
    assert body["history"][-1]["reason"] == (
        "start request rejected: KeyError: 'missing'; invalid workflow: node 'a': depends_on: 'missing'"
        " is not a node of this workflow"
    ), body["history"]
    engine.stop()
    engine.start()
    assert engine.wait_status(execution_id, timeout=30)["status"] == "failed", "not pending again"
    status, page = call("GET", f"{engine.url}/api/executions?status=pending")
    assert status == 200 and execution_id not in [r["id"] for r in page["executions"]]
