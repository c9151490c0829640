"""Idempotent starts: the execution id a start request with an ``Idempotency-Key`` gets.

The id is derived from the team, the key and the 24-hour window the request falls in, so a
retry (from any instance, whether or not the first answer reached the client) names the same
run, and the orchestrator, which starts an execution id once, starts it once. A retry early in
the next window also looks at the previous window's id: the key is honoured for 24 hours
whichever side of a window boundary it lands. Ids never repeat across windows, so a key reused
days later starts a new run under a new id (an id is never given to two different runs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from linkflow_stream.core.clock import to_millis
from linkflow_stream.core.errors import ValidationError

WINDOW = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def check_key(key: str) -> str:
    """The key as given, if it is 1 to 255 printable ASCII characters (spaces included)."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ValidationError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


def execution_ids(team: str, key: str, at: datetime) -> tuple[str, str]:
    """(the id for a new run now, the id the same key had in the previous window)."""
    window = to_millis(at) // (int(WINDOW.total_seconds()) * 1000)
    return _id(team, key, window), _id(team, key, window - 1)


def still_named(body: Mapping[str, Any] | None, at: datetime) -> bool:
    """Whether a run (its API body) that the previous window's id names began less than 24 hours
    before ``at``, so that the key still names it."""
    if body is None:
        return False
    created = datetime.fromisoformat(str(body["created_at"]).replace("Z", "+00:00"))
    return at - created < WINDOW


@dataclass(frozen=True)
class StartedAs:
    """What names a start for a repeated key or execution id: its workflow and a digest of its
    input (as JSON with sorted keys: ``1`` and ``1.0`` differ, key order does not count). A digest,
    so a reader may keep it in place of an input that may be megabytes."""

    workflow_id: str | None
    input_digest: str

    @classmethod
    def of(cls, workflow_id: str | None, input_data: Any) -> StartedAs:
        return cls(workflow_id, hashlib.sha256(json.dumps(input_data, sort_keys=True).encode()).hexdigest())

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StartedAs:
        """From a run's ``GET /api/executions/{id}`` body."""
        return cls.of(body.get("workflow_id"), body.get("input_data"))


def same_start(body: Mapping[str, Any], workflow_id: str, input_data: Any) -> bool:
    """Whether a run (its API body) is the start a repeated key or execution id names: the same
    workflow and the same input (``StartedAs``). A repeat with another start is refused, never
    answered with this run: it would drop the new input unseen, or hand a webhook caller a run of
    another workflow (ADR 0049)."""
    return StartedAs.from_body(body) == StartedAs.of(workflow_id, input_data)


def _id(team: str, key: str, window: int) -> str:
    digest = hashlib.sha256(f"{team}\x00{key}\x00{window}".encode()).hexdigest()
    return f"exec_{digest[:32]}"
