"""The client's calls as data: the requests they make and how they read answers, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import linkflow_stream.client as client_package
from linkflow_stream.client import Conflict, Started
from linkflow_stream.client import _calls as calls
from linkflow_stream.client._calls import Answer
from linkflow_stream.client._config import base_headers, base_url
from linkflow_stream.client._errors import ClientError


def test_the_public_names_are_pinned() -> None:
    assert sorted(client_package.__all__) == sorted(
        [
            "DEFAULT_URL", "TERMINAL", "Accepted", "ApiError", "AsyncClient", "Client", "ClientError",
            "Conflict", "ConnectionFailed", "ErrorBody", "Execution", "ExecutionPage", "ExecutionSummary",
                "ExecutionSummaryPage", "Forbidden",
            "LogLine", "NodeStatus", "NotFound", "ServerError", "Started", "TooManyRequests", "Unauthorized",
            "Unavailable",
            "ValidationFailed", "WaitTimedOut", "WorkflowRegistered", "WorkflowSummary", "start_via_kafka",
        ]
    )  # fmt: skip
    for name in client_package.__all__:
        assert getattr(client_package, name) is not None


def test_a_start_carries_priority_key_and_wait_where_the_api_reads_them() -> None:
    call = calls.start_execution("wf", {"n": 1}, wait=2.5, priority="high", idempotency_key="order-7")
    assert (call.method, call.url("http://h:1/")) == ("POST", "http://h:1/api/executions?wait=2.5")
    assert call.headers == {"X-Priority": "high", "Idempotency-Key": "order-7"}
    assert call.data() == b'{"workflow_id": "wf", "input_data": {"n": 1}}'
    assert call.timeout_extra == 2.5
    plain = calls.start_execution("wf")
    assert (plain.query, plain.headers, plain.body["input_data"]) == ({}, {}, {})


def test_a_start_reads_both_answers() -> None:
    call = calls.start_execution("wf")
    accepted = call.read(Answer(202, {}, '{"id": "exec_1", "status": "pending"}'))
    assert accepted == Started("exec_1", "pending", None, False)
    assert not accepted.ended
    finished = '{"id": "exec_1", "status": "failed", "nodes": {}}'
    replayed = call.read(Answer(200, {"idempotent-replayed": "true"}, finished))
    assert (replayed.status, replayed.ended, replayed.replayed) == ("failed", True, True)
    assert replayed.execution is not None and replayed.execution["nodes"] == {}


def test_ids_are_quoted_into_one_path_segment() -> None:
    assert calls.get_execution("a/b?c").path == "/api/executions/a%2Fb%3Fc"
    assert calls.cancel_execution("x y").path == "/api/executions/x%20y/cancel"
    assert calls.pause_execution("x y").path == "/api/executions/x%20y/pause"
    assert calls.pause_execution("e", "suspend").body == {"deadline": "suspend"}
    assert calls.resume_execution("e").path == "/api/executions/e/resume"


def test_list_filters_become_the_query_and_times_iso_8601() -> None:
    call = calls.list_executions(
        status="failed",
        workflow_id="wf",
        created_after=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        created_before=datetime(2026, 12, 1, 10, 0),  # noqa: DTZ001 - naive is UTC, as the API reads it
        limit=10,
        cursor="abc",
    )
    assert call.query == {
        "status": "failed",
        "workflow_id": "wf",
        "created_after": "2026-12-01T09:30:00+00:00",
        "created_before": "2026-12-01T10:00:00+00:00",
        "limit": "10",
        "cursor": "abc",
    }
    later = calls.list_executions(created_after=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    assert later.query == {"created_after": "2026-01-01T00:00:00+02:00"}
    assert calls.list_executions().query == {}


def test_summaries_are_the_same_listing_with_view_summary() -> None:
    call = calls.list_execution_summaries(status="failed", limit=5, cursor="abc")
    assert (call.method, call.path) == ("GET", "/api/executions")
    assert call.query == {"status": "failed", "limit": "5", "cursor": "abc", "view": "summary"}
    assert calls.list_execution_summaries().query == {"view": "summary"}


def test_an_unexpected_status_is_the_mapped_error() -> None:
    call = calls.cancel_execution("e")
    with pytest.raises(Conflict) as caught:
        call.read(Answer(409, {}, '{"error": {"type": "conflict", "message": "execution e already ended"}}'))
    assert caught.value.message == "execution e already ended"
    assert (
        calls.readiness().read(Answer(503, {}, '{"status": "not_ready", "checks": {}}'))["status"]
        == "not_ready"
    )


def test_url_and_key_come_from_the_arguments_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINKFLOW_URL", raising=False)
    monkeypatch.delenv("LINKFLOW_API_KEY", raising=False)
    assert base_url(None) == "http://127.0.0.1:8084"
    assert "Authorization" not in base_headers(None)
    monkeypatch.setenv("LINKFLOW_URL", "https://engine.example:8443/")
    monkeypatch.setenv("LINKFLOW_API_KEY", "lfk_env")
    assert base_url(None) == "https://engine.example:8443"
    assert base_headers(None)["Authorization"] == "Bearer lfk_env"
    assert base_url("http://other:1") == "http://other:1"
    assert base_headers("lfk_arg")["Authorization"] == "Bearer lfk_arg"
    assert "Authorization" not in base_headers("")  # an empty key sends none
    for bad in ("file:///etc/passwd", "engine:8084", "http://"):
        with pytest.raises(ClientError, match="must be http"):
            base_url(bad)
