"""Schedules on a real engine: the HTTP contract, slots firing runs that carry ``schedule_id``,
pause and resume, overlap, and a kill -9 while slots keep falling due: after the restart every
slot has fired exactly once (catch-up ``all``), and ``linkflow.start`` holds each slot's run once."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from linkflow_stream.core import topic_names
from linkflow_stream.core.schedule import execution_id_for
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.dev.testing import EngineProcess, call, read_topic
from linkflow_stream.kafka.codec import default_codec

pytestmark = pytest.mark.e2e


def workflow(engine: EngineProcess, *nodes: dict[str, Any]) -> str:
    wf_id = f"sched-wf-{uuid.uuid4().hex[:8]}"
    default = ({"id": "t", "type": "transform", "config": {"expression": "input.n + 1"}},)
    engine.register({"id": wf_id, "nodes": list(nodes or default)})
    return wf_id


def schedule(engine: EngineProcess, body: dict[str, Any]) -> tuple[int, Any]:
    return call("POST", f"{engine.url}/api/schedules", body)


def runs_of(engine: EngineProcess, wf_id: str) -> list[dict[str, Any]]:
    status, page = call("GET", f"{engine.url}/api/executions?workflow_id={wf_id}&limit=1000")
    assert status == 200, page
    return list(page["executions"])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout}s: {what}")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_bad_schedules_get_a_clear_400_404_or_409(engine: EngineProcess) -> None:
    wf_id = workflow(engine)
    sid = f"s-{uuid.uuid4().hex[:6]}"
    for body, why in (
        ({"id": sid, "workflow_id": wf_id}, "exactly one of cron"),
        ({"id": sid, "workflow_id": wf_id, "cron": "* * * * *", "every_seconds": 5}, "exactly one of cron"),
        ({"id": sid, "workflow_id": wf_id, "cron": "61 * * * *"}, "minute"),
        ({"id": sid, "workflow_id": wf_id, "cron": "* * * * * *"}, "5 fields"),
        ({"id": sid, "workflow_id": wf_id, "every_seconds": 0}, "every_seconds"),
        ({"id": sid, "workflow_id": wf_id, "every_seconds": 5, "timezone": "Mars/Base"}, "IANA"),
        ({"id": sid, "workflow_id": wf_id, "every_seconds": 5, "overlap": "sometimes"}, "overlap"),
        ({"id": "bad id!", "workflow_id": wf_id, "every_seconds": 5}, "id"),
    ):
        status, answer = schedule(engine, body)
        assert status == 400, (body, answer)
        assert why in answer["error"]["message"], (body, answer)
    status, answer = schedule(engine, {"id": sid, "workflow_id": "no-such-workflow", "every_seconds": 5})
    assert status == 404, answer
    status, made = schedule(
        engine, {"id": sid, "workflow_id": wf_id, "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}
    )
    assert status == 201, made
    assert made["next_slot"] is not None and made["paused"] is False
    assert schedule(engine, {"id": sid, "workflow_id": wf_id, "every_seconds": 5})[0] == 409
    status, answer = call(
        "PATCH", f"{engine.url}/api/schedules/{sid}", {"cron": "* * * * *", "every_seconds": 3}
    )
    assert status == 400, answer
    status, answer = call("PATCH", f"{engine.url}/api/schedules/{sid}", {"color": "red"})
    assert status == 400, answer
    # one timing replaces the other, both ways (a cron once could never be set again)
    patch = f"{engine.url}/api/schedules/{sid}"
    status, changed = call("PATCH", patch, {"every_seconds": 60})
    assert status == 200 and (changed["every_seconds"], changed["cron"]) == (60, None), changed
    status, changed = call("PATCH", patch, {"cron": "*/5 * * * *"})
    assert status == 200 and (changed["cron"], changed["every_seconds"]) == ("*/5 * * * *", None), changed
    status, changed = call("PATCH", patch, {"every_seconds": 30, "cron": None})
    assert status == 200 and (changed["every_seconds"], changed["cron"]) == (30, None), changed
    status, changed = call("PATCH", patch, {"cron": "0 9 * * 1-5", "every_seconds": None})
    assert status == 200 and (changed["cron"], changed["every_seconds"]) == ("0 9 * * 1-5", None), changed
    status, listed = call("GET", f"{engine.url}/api/schedules")
    assert status == 200 and sid in {s["id"] for s in listed["schedules"]}
    status, gone = call("DELETE", f"{engine.url}/api/schedules/{sid}")
    assert status == 200 and gone == {"id": sid, "deleted": True}
    assert call("GET", f"{engine.url}/api/schedules/{sid}")[0] == 404
    assert call("DELETE", f"{engine.url}/api/schedules/{sid}")[0] == 404


def test_slots_fire_runs_that_carry_the_schedule_and_pause_stops_them(engine: EngineProcess) -> None:
    wf_id = workflow(engine)
    sid = f"s-{uuid.uuid4().hex[:6]}"
    status, made = schedule(
        engine,
        {"id": sid, "workflow_id": wf_id, "every_seconds": 1, "input_data": {"n": 41}, "overlap": "allow"},
    )
    assert status == 201, made
    runs = wait_for(
        lambda: [r for r in runs_of(engine, wf_id) if r["status"] == "success"], 30, "a scheduled run"
    )
    run = runs[0]
    assert run["schedule_id"] == sid
    assert run["nodes"]["t"]["output"] == 42
    created = parse(made["created_at"])
    slots = {execution_id_for(sid, created + timedelta(seconds=n)) for n in range(1, 600)}
    assert run["id"] in slots  # sched-<schedule id>-<slot>Z, the slot on the schedule's grid

    asked_at = datetime.now(UTC)
    status, paused = call("PATCH", f"{engine.url}/api/schedules/{sid}", {"paused": True})
    assert status == 200 and paused["paused"] is True and paused["next_slot"] is None
    time.sleep(5)
    # paused: nothing fires. A slot already under way when the pause came may still show up (a
    # loaded machine can take seconds to list it), so what counts is that no run is of a later slot.
    last_slot = execution_id_for(sid, asked_at + timedelta(seconds=1))
    before = {r["id"] for r in runs_of(engine, wf_id)}
    assert all(run_id <= last_slot for run_id in before), sorted(before)

    status, resumed = call("PATCH", f"{engine.url}/api/schedules/{sid}", {"paused": False})
    assert status == 200 and resumed["paused"] is False
    wait_for(lambda: len(runs_of(engine, wf_id)) > len(before), 30, "a run after resuming")
    resumed_at = parse(resumed["effective_from"])
    newer = [r for r in runs_of(engine, wf_id) if r["id"] not in before]
    # nothing is owed for the pause: every run fired after it is of a slot after the resume
    assert all(r["id"] > execution_id_for(sid, resumed_at) for r in newer), newer
    call("DELETE", f"{engine.url}/api/schedules/{sid}")


def test_overlap_skip_never_runs_two_at_once(engine: EngineProcess) -> None:
    wf_id = workflow(engine, {"id": "w", "type": "wait", "config": {"seconds": 2.5}})
    sid = f"s-{uuid.uuid4().hex[:6]}"
    assert (
        schedule(engine, {"id": sid, "workflow_id": wf_id, "every_seconds": 1, "overlap": "skip"})[0] == 201
    )
    wait_for(lambda: sum(r["status"] == "success" for r in runs_of(engine, wf_id)) >= 3, 60, "three runs")
    call("PATCH", f"{engine.url}/api/schedules/{sid}", {"paused": True})
    done = wait_for(
        lambda: (rs := runs_of(engine, wf_id)) and all(r["status"] == "success" for r in rs) and rs,
        30,
        "all done",
    )
    spans = sorted((parse(r["started_at"]), parse(r["finished_at"])) for r in done)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans  # never two at once
    _, body = call("GET", f"{engine.url}/api/schedules/{sid}")
    assert body["skipped"] >= len(done), body  # 1-second slots, 2.5-second runs: most are skipped
    call("DELETE", f"{engine.url}/api/schedules/{sid}")


def test_kill_9_while_slots_fall_due_fires_each_slot_exactly_once(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    engine = engine_factory()
    wf_id = workflow(engine)
    sid = f"s-{uuid.uuid4().hex[:6]}"
    status, made = schedule(
        engine,
        {
            "id": sid,
            "workflow_id": wf_id,
            "every_seconds": 1,
            "overlap": "allow",
            "catchup": "all",
            "input_data": {"n": 1},
        },
    )
    assert status == 201, made
    wait_for(lambda: len(runs_of(engine, wf_id)) >= 3, 60, "three scheduled runs before the kill")
    before = len(runs_of(engine, wf_id))
    engine.kill()  # the scheduler fires a slot every second: one is always close
    created = parse(made["created_at"])
    killed_at = datetime.now(created.tzinfo)
    time.sleep(4)  # slots fall due while no engine runs
    engine.start()
    restarted_at = datetime.now(created.tzinfo)

    def caught_up() -> dict[str, Any] | None:
        _, body = call("GET", f"{engine.url}/api/schedules/{sid}")
        return body if body["last_slot"] and parse(body["last_slot"]) >= restarted_at else None

    wait_for(caught_up, 90, "the schedule to catch up after the restart")
    call("PATCH", f"{engine.url}/api/schedules/{sid}", {"paused": True})
    time.sleep(2)
    _, body = call("GET", f"{engine.url}/api/schedules/{sid}")
    last = parse(body["last_fired_slot"])
    slots = [created + timedelta(seconds=n) for n in range(1, int((last - created).total_seconds()) + 1)]
    expected = {execution_id_for(sid, slot) for slot in slots}
    downtime = {execution_id_for(sid, slot) for slot in slots if killed_at < slot < restarted_at}
    assert len(downtime) >= 3  # slots fell due while no engine ran: all owed to catch-up
    runs = wait_for(
        lambda: (rs := runs_of(engine, wf_id)) and {r["id"] for r in rs} >= expected and rs,
        60,
        "every slot's run",
    )
    ids = {r["id"] for r in runs}
    assert ids == expected, sorted(ids ^ expected)
    assert downtime <= ids and len(ids) > before  # the downtime's slots fired after the restart
    assert body["fired"] == len(expected)
    # at the Kafka level: linkflow.start holds each slot's request once (one transaction each)
    codec = default_codec()
    records = asyncio.run(read_topic(engine.bootstrap, engine.settings().topic(topic_names.START)))
    mine = [codec.decode(r.value, StartRequest) for r in records]
    counts = Counter(req.execution_id for req in mine if req.links.get("schedule_id") == sid)
    assert set(counts) == expected
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    wait_for(
        lambda: all(r["status"] == "success" for r in runs_of(engine, wf_id)), 60, "every run to succeed"
    )
