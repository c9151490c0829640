"""Admission control's rule (``core.admission``) and what it counts (``StatusView.queued_of_team``)."""

from __future__ import annotations

import pytest

from linkflow_stream.core.admission import Admission, TooManyRequestsError
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.http.errors import STATUS
from projections.status import StatusView

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"http": NodeKind(Dispatch.TASK)})


def workflow(team: str | None) -> WorkflowDefinition:
    return WorkflowDefinition(id="wf", created_at=T0, team=team, nodes=(NodeDefinition(id="h", type="http"),))


def request(execution_id: str, team: str | None) -> StartExecution:
    return StartExecution(execution_id=execution_id, workflow=workflow(team), input={}, requested_at=T0)


def test_queued_counts_accepted_runs_per_team_and_not_running_ones() -> None:
    view = StatusView()
    for execution_id, team in (
        ("a1", "alpha"),
        ("a2", "alpha"),
        ("b1", "beta"),
        ("n1", None),
        ("a3", "alpha"),
    ):
        view.accept(request(execution_id, team))
    for event in decide(None, request("a3", "alpha"), T0, CFG):  # a3 starts running
        view.apply(event)
    assert [view.queued_of_team(t) for t in ("alpha", "beta", None, "gamma")] == [2, 1, 1, 0]


def test_a_start_kafka_did_not_acknowledge_is_withdrawn_and_no_longer_counts() -> None:
    view = StatusView()
    view.accept(request("a1", "alpha"))
    view.accept(request("a2", "alpha"))
    view.withdraw("a2")  # the API's publish failed (503): it must not count as queued for ever
    assert view.queued_of_team("alpha") == 1
    assert view.get("a2") is None
    assert view.accept(request("a2", "alpha"))  # it did reach the log after all: read back, counted
    assert view.queued_of_team("alpha") == 2


def test_no_limit_admits_everything() -> None:
    Admission(0, 5, lambda _team: 10**6).check("alpha")
    assert not Admission(0, 5, lambda _team: 10**6).limited


def test_the_limit_refuses_the_start_that_would_exceed_it() -> None:
    queued = {"alpha": 1, None: 2}
    admission = Admission(2, 7, lambda team: queued.get(team, 0))
    admission.check("alpha")  # 1 queued: a second may come
    admission.check("beta")
    with pytest.raises(TooManyRequestsError) as info:
        admission.check("alpha", also_queued=1)  # one more in the intake's batch
    error = info.value
    assert (error.error_type, error.retryable, error.retry_after_seconds) == ("too_many_requests", True, 7)
    assert (error.team, error.team_label) == ("alpha", "alpha")
    assert error.message == (
        "team 'alpha' has 2 runs queued, the most allowed (LINKFLOW_MAX_QUEUED_PER_TEAM=2); try again in 7s"
    )
    with pytest.raises(TooManyRequestsError) as info:
        admission.check(None)
    assert info.value.team_label == "none"
    assert info.value.message.startswith("workflows without a team have 2 runs queued")


def test_a_refusal_is_a_429() -> None:
    assert STATUS[TooManyRequestsError.error_type] == 429
