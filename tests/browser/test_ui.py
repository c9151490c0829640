"""The web UI in a real headless Chromium against a real engine on the real broker.

What a user does: follow a run from the list to its failure and read the failing node's error
in two clicks, watch node states change without a reload, cancel a run, page through the list,
start a run from a workflow's page, read the operations page, and give a key when keys are on.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from linkflow_stream.dev.testing import EngineProcess, TargetServer, call

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = ROOT / "docs" / "img" / "ui-run.png"
ARTIFACTS = ROOT / "artifacts" / "browser"  # where the browser fixture leaves each test's screenshot
WAIT = 45


def until(driver: WebDriver, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it gives something truthy (a redrawn element is tried again)."""

    def attempt(_: WebDriver) -> Any:
        try:
            return check()
        except (StaleElementReferenceException, WebDriverException):
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(attempt, message=what)


def node_status(driver: WebDriver, node_id: str) -> str | None:
    found = driver.execute_script(
        "const g = document.querySelector(`#dag g.node[data-node='${arguments[0]}']`);"
        "return g ? g.getAttribute('data-status') : null;",
        node_id,
    )
    return None if found is None else str(found)


def run_status(driver: WebDriver) -> str | None:
    found = driver.execute_script(
        "const b = document.querySelector('#run-status .badge'); return b ? b.dataset.status : null;"
    )
    return None if found is None else str(found)


def row_status(driver: WebDriver, execution_id: str) -> str | None:
    found = driver.execute_script(
        "const r = document.querySelector(`#runs-body tr[data-id='${arguments[0]}']`);"
        "return r ? r.dataset.status : null;",
        execution_id,
    )
    return None if found is None else str(found)


def mark_page(driver: WebDriver) -> None:
    """Leave a mark in this page's memory: it is gone if the page is ever loaded again."""
    driver.execute_script("window.__sameDocument = 'yes';")


def same_page(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return window.__sameDocument === 'yes';"))


def click_node(driver: WebDriver, node_id: str) -> None:
    until(
        driver,
        lambda: driver.find_element(By.CSS_SELECTOR, f"#dag g.node[data-node='{node_id}']").click() or True,
        f"click node {node_id}",
    )


def confirm(driver: WebDriver) -> None:
    until(
        driver,
        lambda: driver.find_element(By.ID, "confirm-dialog").get_attribute("open") is not None,
        "dialog",
    )
    driver.find_element(By.ID, "confirm-yes").click()


def failing_workflow(target: TargetServer, hold_seconds: float | None) -> dict[str, Any]:
    """A diamond whose condition skips one branch, a wait, then an HTTP call that fails (500).
    ``hold_seconds`` ``None``: the wait is for the signal ``go`` (the test sends it once it has
    seen the node running, so a slow machine cannot let it end unseen)."""
    hold: dict[str, Any] = (
        {"type": "wait_event", "config": {"name": "go", "timeout_seconds": 600}}
        if hold_seconds is None
        else {"type": "wait", "config": {"seconds": hold_seconds}}
    )
    return {
        "id": f"ui-orders-{uuid.uuid4().hex[:6]}",
        "name": "Order pipeline",
        "nodes": [
            {"id": "fetch", "type": "transform", "config": {"expression": "{'total': input.total}"}},
            {
                "id": "check",
                "type": "condition",
                "depends_on": ["fetch"],
                "config": {"expression": "nodes.fetch.total > 100"},
            },
            {"id": "hold", "depends_on": ["check:true"], **hold},
            {
                "id": "small",
                "type": "transform",
                "depends_on": ["check:false"],
                "config": {"expression": "'s'"},
            },
            {
                "id": "charge",
                "type": "http",
                "depends_on": ["hold"],
                "config": {"url": f"{target.url}/status/500", "method": "POST"},
            },
            {
                "id": "receipt",
                "type": "transform",
                "depends_on": ["charge"],
                "config": {"expression": "'ok'"},
            },
        ],
    }


def test_a_run_is_followed_from_the_list_to_its_failing_node_in_two_clicks(
    engine: EngineProcess, target: TargetServer, browser: WebDriver
) -> None:
    wf = engine.register(failing_workflow(target, hold_seconds=None))
    _, started = engine.start_execution(wf["id"], {"total": 500})
    run_id = started["id"]
    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}")
    until(browser, lambda: row_status(browser, run_id) == "running", "the list shows the run running")
    mark_page(browser)

    browser.find_element(By.CSS_SELECTOR, f"#runs-body tr[data-id='{run_id}'] a.run-link").click()  # 1
    until(browser, lambda: node_status(browser, "hold") == "running", "the wait node running")
    assert run_status(browser) == "running"
    assert node_status(browser, "small") == "skipped", "the branch not taken shows as skipped"
    assert node_status(browser, "charge") == "pending"
    assert call("POST", f"{engine.url}/api/executions/{run_id}/events/go", {"ok": True})[0] == 202

    until(browser, lambda: node_status(browser, "charge") == "failed", "the http node failed")
    until(browser, lambda: run_status(browser) == "failed", "the run failed")
    assert node_status(browser, "hold") == "success"
    assert same_page(browser), "every change came over the WebSocket, without a reload"

    click_node(browser, "charge")  # 2
    until(browser, lambda: browser.find_element(By.ID, "detail-node").text == "charge", "the node's panel")
    assert browser.find_element(By.ID, "error-class").text == "http_5xx"
    assert "HTTP 500" in browser.find_element(By.ID, "error-message").text
    assert browser.find_element(By.ID, "error-retryable").text == "yes"
    until(browser, lambda: "failed" in browser.find_element(By.ID, "node-logs").text, "the node's log lines")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#gantt rect.bar-failed"), "the timeline")
    # fetch and check ran inline, each attempt one event (ADR 0056); hold waited for its signal
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gantt rect.bar-succeeded")) == 3
    history = browser.find_element(By.ID, "history").text
    assert "pending" in history and "running" in history and "failed" in history
    assert engine.get(run_id)["status"] == "failed"

    browser.set_window_size(1440, 1180)  # room for the timeline and the history below the DAG
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)  # the resize's layout and paint
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / README_SCREENSHOT.name))
    if os.environ.get("LINKFLOW_README_SCREENSHOT") == "1":  # opt in: the committed file stays put
        browser.save_screenshot(str(README_SCREENSHOT))

    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}")
    until(browser, lambda: row_status(browser, run_id) == "failed", "the list shows the failure")


def test_the_list_updates_a_run_status_without_a_reload(engine: EngineProcess, browser: WebDriver) -> None:
    wf = engine.register(
        {
            "id": f"ui-live-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 300}}],
        }
    )
    _, started = engine.start_execution(wf["id"])
    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}")
    until(browser, lambda: row_status(browser, started["id"]) == "running", "running in the list")
    mark_page(browser)
    call("POST", f"{engine.url}/api/executions/{started['id']}/cancel")  # the change, when the test says
    until(browser, lambda: row_status(browser, started["id"]) == "cancelled", "cancelled in the list")
    assert same_page(browser)


def test_a_run_is_cancelled_from_its_page(engine: EngineProcess, browser: WebDriver) -> None:
    wf = engine.register(
        {
            "id": f"ui-cancel-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "long", "type": "wait", "config": {"seconds": 120}},
                {"id": "after", "type": "transform", "depends_on": ["long"], "config": {"expression": "1"}},
            ],
        }
    )
    _, started = engine.start_execution(wf["id"])
    run_id = started["id"]
    browser.get(f"{engine.url}/ui/executions/{run_id}")
    until(browser, lambda: node_status(browser, "long") == "running", "the long wait running")
    mark_page(browser)
    browser.find_element(By.ID, "action-cancel").click()
    confirm(browser)
    until(browser, lambda: run_status(browser) == "cancelled", "the run cancelled on the page")
    assert node_status(browser, "long") == "cancelled"
    assert same_page(browser)
    assert engine.get(run_id)["status"] == "cancelled"
    assert not browser.find_elements(By.ID, "action-cancel"), "an ended run offers no cancel"


SLOW_READS = """
// Every read of the kinds named is held back by the delay given, and logged: when it started and
// ended, what the page showed then, and whether the tab was hidden. A page that fires the next read
// before the last has answered shows two in flight at once.
const [delays] = arguments;
const real = window.fetch.bind(window);
window.__reads = [];
window.__inFlight = {};
window.__most = {};
window.fetch = async (input, init) => {
  const url = String(input);
  const kind = Object.keys(delays).find((k) => url.includes(k));
  if (!kind) return real(input, init);
  const badge = document.querySelector("#run-status .badge");
  const status = badge ? badge.dataset.status : null;
  const entry = { kind, url, start: Date.now(), end: null, status, hidden: document.hidden };
  window.__reads.push(entry);
  window.__inFlight[kind] = (window.__inFlight[kind] || 0) + 1;
  window.__most[kind] = Math.max(window.__most[kind] || 0, window.__inFlight[kind]);
  try {
    await new Promise((ok) => setTimeout(ok, delays[kind]));
    return await real(input, init);
  } finally {
    window.__inFlight[kind] -= 1;
    entry.end = Date.now();
  }
};
"""


def reads(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    found = driver.execute_script("return window.__reads.filter((r) => r.kind === arguments[0]);", kind)
    return list(found)


def set_hidden(driver: WebDriver, hidden: bool) -> None:
    """What the browser does when the tab goes to the background (or comes back)."""
    driver.execute_script(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => arguments[0]});"
        "document.dispatchEvent(new Event('visibilitychange'));",
        hidden,
    )


def test_a_changing_run_reads_its_events_and_logs_one_call_at_a_time(
    engine: EngineProcess, browser: WebDriver
) -> None:
    """Each /events read scans the run's partition of the event log: a run whose body changes every
    second must not have the page fire one per change (nor stack them up while one is slow), nor
    read while the tab is hidden; the picked node's logs likewise."""
    chain = [
        {
            "id": f"w{i:02}",
            "type": "wait",
            "config": {"seconds": 1},
            **({"depends_on": [f"w{i - 1:02}"]} if i else {}),
        }
        for i in range(120)
    ]
    wf = engine.register({"id": f"ui-busy-{uuid.uuid4().hex[:6]}", "nodes": chain})
    _, started = engine.start_execution(wf["id"])
    run_id = started["id"]
    browser.get(f"{engine.url}/ui/executions/{run_id}")
    until(browser, lambda: node_status(browser, "w01") == "running", "the chain under way")
    browser.execute_script(SLOW_READS, {"/events": 2500, "/logs?": 2500})
    click_node(browser, "w00")  # its logs are read again as the run changes
    until(
        browser,
        lambda: len([r for r in reads(browser, "/events") if r["end"]]) >= 3,
        "three reads of the events",
        90,
    )

    set_hidden(browser, True)
    until(
        browser,
        lambda: all(r["end"] for r in browser.execute_script("return window.__reads;")),
        "the reads under way answered",
    )
    before = len(browser.execute_script("return window.__reads;"))
    events_before = len(reads(browser, "/events"))
    time.sleep(6)  # the run changes six times meanwhile: a hidden tab reads nothing
    assert len(browser.execute_script("return window.__reads;")) == before, "a hidden tab read"
    set_hidden(browser, False)
    until(
        browser,
        lambda: len(reads(browser, "/events")) > events_before,
        "a read once shown again",
    )

    call("POST", f"{engine.url}/api/executions/{run_id}/cancel")
    until(browser, lambda: run_status(browser) == "cancelled", "cancelled on the page")
    until(
        browser,
        lambda: any(r["status"] == "cancelled" and r["end"] for r in reads(browser, "/events")),
        "one more read once ended",
    )
    most = browser.execute_script("return window.__most;")
    assert most["/events"] == 1, f"event reads overlapped: {most}"
    assert most["/logs?"] == 1, f"log reads of one node overlapped: {most}"
    assert not any(r["hidden"] for r in browser.execute_script("return window.__reads;"))
    events = reads(browser, "/events")
    for before_it, it in itertools.pairwise(events):
        if it["status"] == "running":  # the throttle while running (the last read after the end is at once)
            assert it["start"] - before_it["end"] >= 3000, (
                f"a read {it['start'] - before_it['end']} ms after the last"
            )
    ended = [r for r in events if r["status"] == "cancelled"]
    assert len(ended) == 1, f"one read after the end, not {len(ended)}"


def test_changing_the_cost_period_keeps_one_loop_of_reads(engine: EngineProcess, browser: WebDriver) -> None:
    """A change of period while a load is under way (its cost report held back here) starts the next
    load; the one under way must not plan one of its own, or every change adds a loop."""
    browser.get(f"{engine.url}/ui/ops")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#ops-costs svg.chart"), "cost chart")
    browser.execute_script(SLOW_READS, {"/api/costs/report": 1500, "/api/admin/queue/status": 0})
    for period in ("day", "week", "all", "day"):
        until(
            browser,
            lambda: (
                reads(browser, "/api/costs/report")
                and browser.execute_script("return (window.__inFlight['/api/costs/report'] || 0) > 0;")
            ),
            "a load under way",
            30,
        )
        browser.find_element(By.CSS_SELECTOR, f"#cost-period option[value='{period}']").click()
    changed = len(reads(browser, "/api/admin/queue/status"))
    until(
        browser, lambda: len(reads(browser, "/api/admin/queue/status")) >= changed + 3, "three more loads", 60
    )
    starts = [r["start"] for r in reads(browser, "/api/admin/queue/status")[changed:]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 2500, f"loads {gaps} ms apart: more than one loop"
    assert "period=day" in reads(browser, "/api/costs/report")[-1]["url"], "the last period chosen is read"


def test_a_malformed_link_says_so_instead_of_a_blank_page(engine: EngineProcess, browser: WebDriver) -> None:
    for path in ("/ui/executions/%E0%A4%A", "/ui/workflows/%zz"):
        browser.get(f"{engine.url}{path}")
        until(
            browser, lambda: "Bad link" in browser.find_element(By.ID, "bad-link").text, f"{path}: bad link"
        )


def wait_due_at(engine: EngineProcess, execution_id: str) -> float:
    """When the run's wait node comes due (epoch seconds), from its ``node_started`` event."""
    status, body = call("GET", f"{engine.url}/api/executions/{execution_id}/events", headers=engine.auth())
    assert status == 200, body
    started = next(e for e in body["events"] if e["type"] == "node_started" and e["node_id"] == "w")
    return datetime.fromisoformat(started["due_at"].replace("Z", "+00:00")).timestamp()


def test_a_run_is_paused_and_resumed_from_its_page(engine: EngineProcess, browser: WebDriver) -> None:
    wf = engine.register(
        {
            "id": f"ui-pause-{uuid.uuid4().hex[:6]}",
            "nodes": [
                # Long enough for the page, the click and the pause on a loaded machine (with 3 s
                # the timer could fire first, seen in a CI review).
                {"id": "w", "type": "wait", "config": {"seconds": 10}},
                {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "'after'"}},
            ],
        }
    )
    _, started = engine.start_execution(wf["id"])
    browser.get(f"{engine.url}/ui/executions/{started['id']}")
    until(browser, lambda: node_status(browser, "w") == "running", "the wait running")
    browser.find_element(By.ID, "action-pause").click()
    confirm(browser)
    until(browser, lambda: run_status(browser) == "paused", "paused on the page")
    # Past the wait's due time: a timer that comes due while paused waits for resume.
    time.sleep(max(0.0, wait_due_at(engine, started["id"]) + 0.5 - time.time()))
    assert node_status(browser, "w") == "running" and node_status(browser, "t") == "pending"
    assert run_status(browser) == "paused"
    until(browser, lambda: browser.find_element(By.ID, "action-resume"), "a resume button").click()
    confirm(browser)
    until(browser, lambda: run_status(browser) == "success", "the run went on and ended")
    assert node_status(browser, "t") == "success"


def test_a_failed_run_is_rerun_from_its_failed_nodes(
    engine: EngineProcess, target: TargetServer, browser: WebDriver
) -> None:
    wf = engine.register(failing_workflow(target, hold_seconds=0.1))
    _, first = engine.start_execution(wf["id"], {"total": 500}, wait=30)
    assert first["status"] == "failed"
    browser.get(f"{engine.url}/ui/executions/{first['id']}")
    until(browser, lambda: run_status(browser) == "failed", "the failed run")
    browser.find_element(By.ID, "action-rerun-failed").click()
    confirm(browser)
    until(browser, lambda: first["id"] not in browser.current_url, "the rerun's page")
    rerun_id = browser.current_url.rsplit("/", 1)[1]
    until(browser, lambda: run_status(browser) == "failed", "the rerun fails again (the target still does)")
    assert first["id"] in browser.find_element(By.ID, "run-facts").text, "the rerun links to its original"
    rerun = engine.get(rerun_id)
    assert rerun["rerun_of"] == first["id"]
    assert rerun["nodes"]["hold"]["reused"] is True, "the nodes that succeeded were not run again"


def test_backing_out_of_the_confirmation_does_nothing(engine: EngineProcess, browser: WebDriver) -> None:
    wf = engine.register(
        {
            "id": f"ui-keep-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 60}}],
        }
    )
    _, started = engine.start_execution(wf["id"])
    browser.get(f"{engine.url}/ui/executions/{started['id']}")
    until(browser, lambda: node_status(browser, "w") == "running", "running")
    browser.find_element(By.ID, "action-cancel").click()
    until(browser, lambda: browser.find_element(By.ID, "confirm-no").is_displayed(), "the dialog")
    browser.find_element(By.ID, "confirm-no").click()
    time.sleep(1.5)  # room for a cancel that should not have been sent to show up
    assert engine.get(started["id"])["status"] == "running"
    call("POST", f"{engine.url}/api/executions/{started['id']}/cancel")


def test_the_list_pages_through_runs_newest_first(engine: EngineProcess, browser: WebDriver) -> None:
    wf = engine.register(
        {
            "id": f"ui-pages-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "t", "type": "transform", "config": {"expression": "input.n"}}],
        }
    )
    ids = [engine.start_execution(wf["id"], {"n": n}, wait=20)[1]["id"] for n in range(5)]
    _, listed = call("GET", f"{engine.url}/api/executions?workflow_id={wf['id']}&limit=50")
    newest_first = [r["id"] for r in listed["executions"]]
    assert sorted(newest_first) == sorted(ids)

    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}&limit=2")
    seen: list[list[str]] = []

    def rows() -> list[str]:
        return [
            str(r.get_attribute("data-id")) for r in browser.find_elements(By.CSS_SELECTOR, "#runs-body tr")
        ]

    for page, size in enumerate((2, 2, 1)):
        label = f"page {page + 1}"
        already = {run for shown in seen for run in shown}
        until(browser, lambda: label in browser.find_element(By.CSS_SELECTOR, ".pager").text, label)  # noqa: B023 - called within this turn
        until(browser, lambda: len(rows()) == size and rows()[0] not in already, f"{label}'s rows")  # noqa: B023
        seen.append(rows())
        if page < 2:
            browser.find_element(By.ID, "older").click()
    assert [run for shown in seen for run in shown] == newest_first
    assert not browser.find_elements(By.ID, "older"), "the last page has no older one"
    browser.find_element(By.ID, "newer").click()
    until(browser, lambda: rows() == seen[1], "back one page")

    # the filter form: what it applies goes into the URL, and the list follows it
    status = browser.find_element(By.CSS_SELECTOR, "#f-status option[value='failed']")
    status.click()
    browser.find_element(By.CSS_SELECTOR, "#filters button[type='submit']").click()
    until(browser, lambda: "status=failed" in browser.current_url, "the filter in the URL")
    until(browser, lambda: "No runs match." in browser.find_element(By.ID, "runs-body").text, "filtered out")
    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}&created_after=2999-01-01T00:00:00Z")
    until(
        browser, lambda: "No runs match." in browser.find_element(By.ID, "runs-body").text, "none that late"
    )
    browser.get(f"{engine.url}/ui/executions?workflow_id={wf['id']}&created_before=2999-01-01T00:00:00Z")
    until(browser, lambda: len(rows()) == 5, "all five before then")


def test_a_run_is_started_from_its_workflow_page(engine: EngineProcess, browser: WebDriver) -> None:
    wf_id = f"ui-start-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}]})
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "a", "type": "transform", "config": {"expression": "input.n"}},
                {
                    "id": "b",
                    "type": "transform",
                    "depends_on": ["a"],
                    "config": {"expression": "nodes.a * 2"},
                },
            ],
        }
    )
    browser.get(f"{engine.url}/ui/workflows")
    until(
        browser,
        lambda: browser.find_elements(By.CSS_SELECTOR, f"#workflows-body tr[data-id='{wf_id}']"),
        "listed",
    )
    browser.find_element(By.CSS_SELECTOR, f"#workflows-body tr[data-id='{wf_id}'] a").click()
    until(browser, lambda: node_status(browser, "b") == "pending", "the latest version's DAG")
    versions = browser.find_element(By.ID, "wf-versions").text
    assert "v2" in versions and "v1" in versions
    browser.find_element(By.CSS_SELECTOR, "#wf-versions li[data-version='1'] a").click()
    until(
        browser,
        lambda: node_status(browser, "b") is None and node_status(browser, "a") == "pending",
        "v1's DAG",
    )

    box = browser.find_element(By.ID, "start-input")
    box.clear()
    box.send_keys('{"n": 21}')
    browser.find_element(By.CSS_SELECTOR, "#start-priority option[value='high']").click()
    browser.find_element(By.ID, "start-run").click()
    until(browser, lambda: "/ui/executions/exec_" in browser.current_url, "the new run's page")
    run_id = browser.current_url.rsplit("/", 1)[1]
    until(browser, lambda: run_status(browser) == "success", "the run succeeded")
    done = engine.get(run_id)
    assert done["priority"] == "high" and done["input_data"] == {"n": 21}
    assert done["nodes"]["b"]["output"] == 42

    browser.get(f"{engine.url}/ui/workflows/{wf_id}")
    box = until(browser, lambda: browser.find_element(By.ID, "start-input"), "the form")
    box.clear()
    box.send_keys("{not json")
    browser.find_element(By.ID, "start-run").click()
    until(browser, lambda: "not JSON" in browser.find_element(By.ID, "start-error").text, "the input refused")


def test_the_operations_page_draws_queues_workers_and_costs(
    engine: EngineProcess, browser: WebDriver
) -> None:
    wf = engine.register(
        {
            "id": f"ui-ops-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "w", "type": "wait", "config": {"seconds": 30}}],
        }
    )
    _, started = engine.start_execution(wf["id"])
    engine.wait_status(started["id"], ("running",))
    browser.get(f"{engine.url}/ui/ops")
    until(
        browser, lambda: started["id"] in browser.find_element(By.ID, "ops-running-runs").text, "running now"
    )
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#ops-queues svg.chart"), "queue chart")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#workers-table tbody tr"), "a worker")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#ops-costs svg.chart"), "cost chart")
    for tile in ("ops-queued", "ops-running", "ops-dlq"):
        assert browser.find_element(By.ID, tile).text.split("\n")[0].isdigit()
    assert "high" in browser.find_element(By.ID, "ops-queues").text
    call("POST", f"{engine.url}/api/executions/{started['id']}/cancel")


@pytest.fixture(scope="module")
def secured(
    kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineProcess, dict[str, str]]]:
    """An engine with keys on, and an operator key of each of two teams."""
    engine = EngineProcess(
        bootstrap=kafka, workdir=tmp_path_factory.mktemp("ui-auth"), extra_env={"LINKFLOW_AUTH": "required"}
    )
    with pytest.raises(RuntimeError, match="API keys are required"):
        engine.start(timeout=60)
    keys = {team: engine.create_key(team, "operator") for team in ("alpha", "beta")}
    engine.start()
    yield engine, keys
    engine.stop()


def test_with_keys_on_the_ui_asks_for_one_and_shows_the_team_its_own_runs(
    secured: tuple[EngineProcess, dict[str, str]], browser: WebDriver
) -> None:
    engine, keys = secured
    runs = {}
    for team, key in keys.items():
        engine.api_key = key
        wf = engine.register(
            {
                "id": f"ui-{team}-{uuid.uuid4().hex[:6]}",
                "nodes": [
                    {"id": "w", "type": "wait", "config": {"seconds": 300}},
                    {"id": "t", "type": "transform", "depends_on": ["w"], "config": {"expression": "1"}},
                ],
            }
        )
        runs[team] = engine.start_execution(wf["id"])[1]["id"]
    engine.api_key = None

    browser.get(f"{engine.url}/ui/executions")
    until(
        browser,
        lambda: browser.find_element(By.ID, "key-dialog").get_attribute("open") is not None,
        "the prompt",
    )
    browser.find_element(By.ID, "key-input").send_keys("lfk_0123456789ab_wrong")
    browser.find_element(By.ID, "key-save").click()
    until(
        browser,
        lambda: "refused this key" in browser.find_element(By.ID, "key-why").text,
        "a wrong key refused",
    )
    box = browser.find_element(By.ID, "key-input")
    box.clear()
    box.send_keys(keys["alpha"])
    browser.find_element(By.ID, "key-save").click()
    until(browser, lambda: row_status(browser, runs["alpha"]) is not None, "alpha's run listed")
    assert row_status(browser, runs["beta"]) is None, "another team's run is not shown"

    # the key is kept, and a WebSocket carries it as a subprotocol: the run page follows live (the
    # run waits 300 s, so the socket must open and carry the cancel: nothing ends it on its own)
    browser.get(f"{engine.url}/ui/executions/{runs['alpha']}")
    until(browser, lambda: node_status(browser, "w") == "running", "the run page with the kept key")
    assert browser.find_element(By.ID, "key-dialog").get_attribute("open") is None
    until(browser, lambda: browser.find_element(By.ID, "run-live").text == "live", "the socket open")
    mark_page(browser)
    browser.find_element(By.ID, "action-cancel").click()
    confirm(browser)
    until(browser, lambda: node_status(browser, "w") == "cancelled", "the node cancelled, seen live")
    until(browser, lambda: run_status(browser) == "cancelled", "the run ended, seen live")
    until(browser, lambda: browser.find_element(By.ID, "run-live").text == "ended", "the socket closed")
    assert same_page(browser), "the change came over the keyed WebSocket, not a reload"
    browser.get(f"{engine.url}/ui/executions/{runs['beta']}")
    until(
        browser, lambda: "404" in browser.find_element(By.ID, "run-error").text, "beta's run is not alpha's"
    )
    beta = {"Authorization": f"Bearer {keys['beta']}"}
    assert call("POST", f"{engine.url}/api/executions/{runs['beta']}/cancel", headers=beta)[0] == 202
