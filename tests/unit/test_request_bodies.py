"""Request bodies: the pydantic models refuse what the hand-written checks refused, and the message
names every wrong field; the client maps each error answer to its class."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from linkflow_stream.client import (
    ApiError,
    Conflict,
    Forbidden,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from linkflow_stream.client._errors import error_for
from linkflow_stream.core.errors import LinkflowError, ValidationError
from linkflow_stream.http.bodies import (
    BroadcastSignalBody,
    KeyCreateBody,
    RetryPolicyBody,
    StartExecutionBody,
    TimeoutBody,
    WorkerRegistration,
    validated,
)


def refusal(model: type[BaseModel], body: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        validated(model, body)
    return caught.value.message


@pytest.mark.parametrize(
    ("model", "body", "says"),
    [
        (StartExecutionBody, {}, "workflow_id is required"),
        (StartExecutionBody, {"workflow_id": ""}, "workflow_id must have at least 1 character"),
        (StartExecutionBody, {"workflow_id": 7}, "workflow_id must be a valid string"),
        (StartExecutionBody, {"workflow_id": "a", "input": {}}, "input is an unknown field"),
        (StartExecutionBody, [1], "the body must be a JSON object with the fields workflow_id, input_data"),
        (TimeoutBody, {"timeout_seconds": 0}, "timeout_seconds must be greater than 0"),
        (TimeoutBody, {"timeout_seconds": 31 * 86_400}, "timeout_seconds must be less than or equal to"),
        (TimeoutBody, {"timeout_seconds": "300"}, "timeout_seconds must be a valid number"),
        (TimeoutBody, {"timeout_seconds": True}, "timeout_seconds must be a valid number"),
        (TimeoutBody, {"timeout_seconds": 5, "x": 1}, "x is an unknown field"),
        (RetryPolicyBody, {"strategy": "sometimes"}, "strategy must be 'exponential', 'fixed' or 'none'"),
        (RetryPolicyBody, {"max_attempts": 0}, "max_attempts must be greater than or equal to 1"),
        (RetryPolicyBody, {"max_attempts": "3"}, "max_attempts must be a valid integer"),
        (KeyCreateBody, {"team": "a b", "role": "viewer"}, "team must match"),
        (KeyCreateBody, {"team": "a", "role": "root"}, "role must be 'viewer', 'operator' or 'admin'"),
        (KeyCreateBody, {"team": "a", "role": "viewer", "name": "n" * 201}, "name must have at most 200"),
        (WorkerRegistration, {"id": "w1", "capacity": 0}, "capacity must be greater than or equal to 1"),
        (WorkerRegistration, {"id": "w1", "capacity": "10"}, "capacity must be a valid integer"),
        (WorkerRegistration, {"id": "bad id", "capacity": 1}, "id must match"),
        (WorkerRegistration, {"id": "w1", "capacity": 1, "tags": ["GPU!"]}, "tags.0 must match"),
        (WorkerRegistration, {"id": "w1", "capacity": 1, "zone": "eu"}, "zone is an unknown field"),
    ],
)
def test_a_refusal_names_the_field(model: type[BaseModel], body: Any, says: str) -> None:
    assert says in refusal(model, body)


@pytest.mark.parametrize("key", [5.5, True, "", "k" * 257, {"a": 1}, None])
def test_a_wrong_correlation_key_is_one_error_in_our_words(key: Any) -> None:
    """Not one error per branch of the union, named by pydantic's tags (``constrained-str``)."""
    message = refusal(BroadcastSignalBody, {"correlation_key": key})
    assert message == (
        "invalid request body: correlation_key must be a string of 1 to 256 characters or an integer"
    )


@pytest.mark.parametrize("key", [7, "order-7", "k" * 256])
def test_a_correlation_key_is_a_string_or_an_integer(key: str | int) -> None:
    assert validated(BroadcastSignalBody, {"correlation_key": key}).correlation_key == key


def test_every_wrong_field_is_named_at_once() -> None:
    message = refusal(WorkerRegistration, {"capacity": -1, "tags": "gpu"})
    assert "id is required" in message
    assert "capacity must be greater than or equal to 1" in message
    assert "tags must be a valid list" in message


def test_valid_bodies() -> None:
    assert validated(StartExecutionBody, {"workflow_id": "wf"}).input_data == {}
    assert validated(StartExecutionBody, {"workflow_id": "wf", "input_data": [1, None]}).input_data == [
        1,
        None,
    ]
    assert validated(TimeoutBody, {"timeout_seconds": 300}).timeout_seconds == 300.0
    fixed = validated(RetryPolicyBody, {"strategy": "fixed", "max_attempts": 3, "multiplier": 1}).policy()
    assert (fixed.max_attempts, fixed.multiplier) == (3, 1.0)
    assert validated(RetryPolicyBody, {"strategy": "none"}).policy().max_attempts == 1
    # a field the strategy sets another way is refused, not overridden unseen
    with pytest.raises(ValidationError, match=r"multiplier cannot be 5\.0 with strategy 'fixed'"):
        validated(RetryPolicyBody, {"strategy": "fixed", "max_attempts": 3, "multiplier": 5}).policy()
    with pytest.raises(ValidationError, match="max_attempts cannot be 9 with strategy 'none'"):
        validated(RetryPolicyBody, {"strategy": "none", "max_attempts": 9}).policy()
    exponential = validated(RetryPolicyBody, {"max_attempts": 4, "initial_delay_seconds": 0.5}).policy()
    assert exponential.schedule() == [0.5, 1.0, 2.0]
    key = validated(KeyCreateBody, {"team": "ops", "role": "admin"})
    assert (key.team, key.role, key.name) == ("ops", "admin", "")
    assert validated(WorkerRegistration, {"id": "w.1", "capacity": 2, "tags": ["gpu"]}).tags == ["gpu"]


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ValidationFailed, False),
        (401, Unauthorized, False),
        (403, Forbidden, False),
        (404, NotFound, False),
        (409, Conflict, False),
        (413, ApiError, False),
        (429, TooManyRequests, True),
        (503, Unavailable, True),
        (500, ServerError, True),
    ],
)
def test_error_answers_map_to_one_class_each(status: int, kind: type[ApiError], retryable: bool) -> None:
    error = error_for(status, {"error": {"type": "some_type", "message": "what went wrong"}})
    assert type(error) is kind
    assert isinstance(error, LinkflowError)
    assert (error.status, error.error_type, error.message, error.retryable) == (
        status,
        "some_type",
        "what went wrong",
        retryable,
    )
    assert str(error) == f"{status} some_type: what went wrong"


def test_a_429_carries_its_retry_after() -> None:
    body = {"error": {"type": "too_many_requests", "message": "team 'a' has 3 runs queued"}}
    error = error_for(429, body, "", {"retry-after": "7"})
    assert isinstance(error, TooManyRequests)
    assert (error.retryable, error.retry_after_seconds, error.error_type) == (True, 7.0, "too_many_requests")
    assert error_for(429, body).retry_after_seconds is None
    assert (
        error_for(429, body, "", {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after_seconds is None
    )


def test_an_error_answer_without_the_json_body_keeps_its_text() -> None:
    error = error_for(502, None, "<html>bad gateway</html>")
    assert isinstance(error, ServerError)
    assert (error.error_type, error.message) == ("http", "<html>bad gateway</html>")
    assert error_for(404, None, "").message == "HTTP 404"
