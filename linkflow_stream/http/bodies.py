"""The request bodies both HTTP APIs accept, as pydantic models: one definition validates a request
and describes it in ``GET /openapi.json`` (``http.openapi``), so the document cannot drift from
what the handlers accept.

Every model forbids unknown fields and is strict (``"10"`` is not a number, ``true`` is not 1), as
the hand-written checks before them were. :func:`validated` turns pydantic's errors into one
``ValidationError`` whose message names every field that is wrong, in the project's wording
(``capacity must be greater than or equal to 1``, ``zone is an unknown field``).

A workflow body is validated by ``core.validation.parse_workflow`` (the model is
``WorkflowDefinition``, plus checks no schema can state: dependencies, cycles, per-type config).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from linkflow_stream.core.auth import TEAM
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.workflow import MAX_TIMEOUT_SECONDS, RetryPolicy

MAX_WAIT_SECONDS = 300.0
"""Longest ``?wait=`` of ``POST /api/executions``."""
LIST_LIMIT = 1000
"""Largest ``?limit=`` of ``GET /api/executions`` (default 50)."""
LIST_VIEWS = ("full", "summary")
"""``GET /api/executions?view=``: whole runs (the default), or runs without their data."""
LOGS_LIMIT = 10_000
"""Largest ``?limit=`` of ``GET /api/executions/{id}/logs`` (default 1000)."""
WORKER_ID = r"^[A-Za-z0-9_.-]{1,128}$"
TAG = r"^[a-z0-9-]{1,32}$"

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class StartExecutionBody(BaseModel):
    """``POST /api/executions``: which workflow to run, with what input. The priority travels in the
    ``X-Priority`` header and the idempotency key in ``Idempotency-Key`` (the seed's contract)."""

    model_config = _STRICT

    workflow_id: str = Field(min_length=1, description="The workflow to run (its latest version).")
    input_data: Any = Field(
        default_factory=dict, description="Any JSON value; nodes read it as `input`. Default `{}`."
    )


class RerunBody(BaseModel):
    """``POST /api/executions/{id}/rerun``: a new run of an ended one."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    from_: Literal["failed", "start"] = Field(
        default="failed",
        alias="from",
        description="`failed` (default): nodes that succeeded and are not downstream of a failed, "
        "cancelled or timed-out node keep their outputs (`reused`); the rest runs again. `start`: "
        "everything runs again.",
    )
    workflow_version: Literal["same", "latest"] = Field(
        default="same", description="The original run's version (default) or the workflow's latest."
    )
    input_data: Any = Field(default=None, description="The new run's input; default the original's.")


class RetryPolicyBody(RetryPolicy):
    """``PUT /api/workflows/{id}/retry``: the workflow's default retry policy. ``fixed`` waits
    ``initial_delay_seconds`` between attempts (the multiplier is 1); ``none`` makes one attempt."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    strategy: Literal["exponential", "fixed", "none"] = Field(
        default="exponential", description="How the delay grows between attempts. Default `exponential`."
    )

    def policy(self) -> RetryPolicy:
        """The ``RetryPolicy`` this body asks for, with the strategy applied. A field the strategy
        sets another way is refused, not overridden unseen (``fixed`` with a multiplier of 5 was
        stored as 1)."""
        fields = self.model_dump(exclude={"strategy"}, exclude_unset=True)
        for strategy, name, value in (("fixed", "multiplier", 1.0), ("none", "max_attempts", 1)):
            if self.strategy == strategy:
                if fields.get(name, value) != value:
                    raise ValidationError(
                        f"invalid request body: {name} cannot be {fields[name]} with strategy "
                        f"{strategy!r}, which sets it to {value:g}; leave {name} out"
                    )
                fields[name] = value
        return RetryPolicy.model_validate(fields)


class TimeoutBody(BaseModel):
    """``PUT /api/executions/{id}/timeout``: the run's deadline, counted from its start."""

    model_config = _STRICT

    timeout_seconds: float = Field(
        gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds from the run's start; a past deadline ends it now."
    )


SIGNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"


def _one_key_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A correlation key that is neither a string nor an integer is one error in our words, not
    one per branch of the union named by pydantic's internal tags (``constrained-str``)."""
    try:
        return handler(value)
    except pydantic.ValidationError:
        raise PydanticCustomError(
            "correlation_key", "must be a string of 1 to 256 characters or an integer"
        ) from None


class BroadcastSignalBody(BaseModel):
    """``POST /api/events/{name}``: a signal for every run waiting on ``name`` with this key."""

    model_config = _STRICT

    correlation_key: Annotated[
        Annotated[str, StringConstraints(min_length=1, max_length=256)] | int, WrapValidator(_one_key_error)
    ] = Field(description="Equals the key a waiting wait_event node computed (a number as its JSON text).")
    payload: Any = Field(default=None, description="Any JSON value: the output of each node it reaches.")
    id: Annotated[str, StringConstraints(pattern=SIGNAL_ID)] | None = Field(
        default=None,
        description="Names the signal (a run takes an id once). Default: the Idempotency-Key header, "
        "else a new id.",
    )


class KeyCreateBody(BaseModel):
    """``POST /api/keys`` (admin): a new API key for a team."""

    model_config = _STRICT

    team: str = Field(pattern=TEAM, description="The team the key acts for.")
    role: Literal["viewer", "operator", "admin"] = Field(
        description="viewer reads; operator also writes; admin also manages keys and workers."
    )
    name: str = Field(default="", max_length=200, description="A label shown in key lists.")


class WorkerRegistration(BaseModel):
    """``POST /api/workers/register`` (port 8085): a worker and what it can take."""

    model_config = _STRICT

    id: str = Field(pattern=WORKER_ID, description="The worker's id.")
    capacity: int = Field(ge=1, le=100_000, description="How many node tasks it runs at once.")
    tags: list[Annotated[str, StringConstraints(pattern=TAG)]] = Field(
        default_factory=list, description="Pools it serves, e.g. `gpu`."
    )


Model = TypeVar("Model", bound=BaseModel)

_PHRASES = (
    (re.compile(r"^Field required$"), "is required"),
    (re.compile(r"^Extra inputs are not permitted$"), "is an unknown field"),
    (re.compile(r"^String should match pattern '(.*)'$"), r"must match \1"),
    (re.compile(r"^(?:Input|String|Value|List|Tuple|Dictionary|Decimal) should "), "must "),
)


def _phrase(message: str) -> str:
    message = message.replace("a valid tuple", "a valid array")  # JSON has arrays; tuples are ours
    for pattern, replacement in _PHRASES:
        if pattern.search(message):
            return pattern.sub(replacement, message, count=1)
    return message


def problems(exc: pydantic.ValidationError) -> list[str]:
    """Each error as ``<field> <what is wrong>``, the field a dotted path (``tags.0``)."""
    found = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if not where and err["type"] == "value_error":  # a check of the whole body (a model validator)
            found.append(err["msg"].removeprefix("Value error, "))
        elif not where:
            found.append("the body must be a JSON object")
        else:
            found.append(f"{where} {_phrase(err['msg'])}")
    return found


class ScheduleChange(BaseModel):
    """``PATCH /api/schedules/{id}``: any of the fields below; the rest stay. ``paused`` pauses or
    resumes (a resumed schedule owes nothing for the pause); a new timing counts from now."""

    model_config = _STRICT

    workflow_id: str | None = Field(default=None, min_length=1, description="Another workflow to run.")
    cron: str | None = Field(
        default=None,
        description="5 fields: minute hour day-of-month month day-of-week (replaces every_seconds).",
    )
    every_seconds: int | None = Field(
        default=None, ge=1, le=366 * 86_400, description="A fixed period in seconds (replaces cron)."
    )
    timezone: str | None = Field(
        default=None, description="IANA zone the cron is read in, e.g. `Europe/Berlin`."
    )
    input_data: Any = Field(default=None, description="The input of every run it starts.")
    overlap: Literal["skip", "allow", "buffer_one"] | None = Field(
        default=None,
        description="A slot while the last run still runs: skip it, run it too, or keep one for later.",
    )
    catchup: Literal["none", "all", "latest"] | None = Field(
        default=None, description="Slots missed while the engine was down: none, all of them, or the latest."
    )
    paused: bool | None = Field(default=None, description="true pauses, false resumes.")


class ScheduleBody(ScheduleChange):
    """``POST /api/schedules``: a workflow that runs by itself, on a cron or every N seconds."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The schedule's id, your choice.")
    workflow_id: str = Field(
        min_length=1, description="The workflow to run (its latest version at each slot)."
    )
    timezone: str = Field(default="UTC", description="IANA zone the cron is read in. Default `UTC`.")
    input_data: Any = Field(default_factory=dict, description="The input of every run. Default `{}`.")
    overlap: Literal["skip", "allow", "buffer_one"] = Field(default="skip", description="Default `skip`.")
    catchup: Literal["none", "all", "latest"] = Field(default="none", description="Default `none`.")
    paused: bool = Field(default=False, description="Create it paused. Default false.")


class PauseBody(BaseModel):
    """``POST /api/executions/{id}/pause`` (the body is optional): what the run's deadline does."""

    model_config = _STRICT

    deadline: Literal["keep", "suspend"] = Field(
        default="keep",
        description="`keep`: the deadline still applies while paused. `suspend`: it stops while "
        "paused and moves on by the paused time at resume. Default `keep`.",
    )


REQUEST_BODIES: tuple[type[BaseModel], ...] = (
    StartExecutionBody,
    RetryPolicyBody,
    TimeoutBody,
    KeyCreateBody,
    WorkerRegistration,
    ScheduleBody,
    ScheduleChange,
    RerunBody,
    PauseBody,
)
"""Every request-body model (the workflow's is ``WorkflowDefinition``); ``http.openapi`` lists them."""


def validated(model: type[Model], body: Any) -> Model:
    """``body`` (decoded JSON) as ``model``, or ``ValidationError`` naming every wrong field."""
    if not isinstance(body, dict):
        fields = ", ".join(model.model_fields)
        raise ValidationError(f"the body must be a JSON object with the fields {fields}")
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise ValidationError("invalid request body: " + "; ".join(problems(exc))) from exc
