"""API keys, roles and teams: who may do what to which runs.

A key is ``lfk_<id>_<secret>``: the id names the key (it is what ``linkflow keys list`` shows and
``revoke`` takes), the secret is 256 random bits. Only ``sha256(secret)`` is stored, on the
compacted ``linkflow.keys`` topic, so every instance can check a key and none can give one back.
A plain hash is enough here: the secret is random, not a password a person chose, so there is
nothing to guess from the hash (a slow password hash would only slow every request).

A key belongs to one team and has one role. Roles are ordered: a ``viewer`` reads, an
``operator`` also starts, cancels and retries runs and registers workflows, an ``admin`` also
manages keys and workers and sees every team. Anything of another team is answered as if it did
not exist (404), so ids do not leak across teams.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from linkflow_stream.core.clock import iso

PREFIX = "lfk"
WEBHOOK_PREFIX = "lfw"
"""A workflow's webhook token is ``lfw_<id>_<secret>``: stored like a key, never accepted as one."""
KEY_ID = re.compile(r"[0-9a-f]{12}")
SECRET = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What ``token_urlsafe`` makes; anything else (a header's stray bytes) is no key, not an error."""
TEAM = r"^[A-Za-z0-9_.-]{1,64}$"
"""The same pattern as ``WorkflowDefinition.team``."""


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role includes ``needed`` (admin > operator > viewer)."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class ApiKey(BaseModel):
    """One key as stored: value of ``linkflow.keys`` (compacted, key = the key id)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=f"^{KEY_ID.pattern}$")
    team: str = Field(pattern=TEAM)
    role: Role
    name: str = ""
    hash: str
    """``sha256:<hex>`` of the secret part."""
    created_at: datetime
    revoked_at: datetime | None = None
    workflow_id: str | None = None
    """Set on a webhook token: it starts runs of this workflow through ``POST /webhook/{id}`` and
    is no API key (the middleware refuses it as one)."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def is_webhook_token(self) -> bool:
        return self.workflow_id is not None

    def public(self) -> dict[str, object]:
        """What may be shown about the key: everything but its hash."""
        return {
            "id": self.id,
            "team": self.team,
            "role": self.role.value,
            "name": self.name,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at) if self.revoked_at else None,
        }


def new_key(team: str, role: Role, name: str, at: datetime) -> tuple[str, ApiKey]:
    """A fresh key: (the key to hand out once, the record to store)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(id=key_id, team=team, role=role, name=name, hash=hash_secret(secret), created_at=at)
    return f"{PREFIX}_{key_id}_{secret}", record


def new_webhook_token(workflow_id: str, team: str, at: datetime) -> tuple[str, ApiKey]:
    """A fresh webhook token of ``workflow_id``: (the token to hand out once, the record to store).
    It is kept as an operator-role record of the workflow's team, which is what a run it starts
    belongs to."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(
        id=key_id,
        team=team,
        role=Role.OPERATOR,
        name=f"webhook of {workflow_id}",
        hash=hash_secret(secret),
        created_at=at,
        workflow_id=workflow_id,
    )
    return f"{WEBHOOK_PREFIX}_{key_id}_{secret}", record


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def split_key(text: str, kind: str = PREFIX) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key (``kind`` ``WEBHOOK_PREFIX``: a webhook token), else
    ``None``."""
    prefix, _, rest = text.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != kind or not KEY_ID.fullmatch(key_id) or not SECRET.fullmatch(secret):
        return None
    return key_id, secret


def matches(record: ApiKey, secret: str) -> bool:
    """Whether ``secret`` is this key's (in constant time)."""
    return hmac.compare_digest(record.hash, hash_secret(secret))


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's team and role, or everyone when auth is disabled."""

    role: Role
    team: str | None
    """``None`` only when auth is disabled."""
    key_id: str | None = None

    def sees(self, team: str | None) -> bool:
        """Whether this principal may see and act on things of ``team``."""
        return self.role is Role.ADMIN or self.team == team

    @property
    def team_scope(self) -> str | None:
        """The one team this principal's lists are limited to; ``None`` for all."""
        return None if self.role is Role.ADMIN else self.team


ANONYMOUS = Principal(role=Role.ADMIN, team=None)
"""Every request when auth is disabled (loopback only, or on purpose)."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the API to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_beyond_loopback(setting: str | None, host: str) -> str | None:
    """The warning every start logs when keys are off on purpose on a non-loopback address."""
    if auth_required(setting, host) or is_loopback(host):
        return None
    return (
        f"LINKFLOW_AUTH=disabled while the API listens on {host}: anyone who reaches its ports can "
        "run code, read every run and cancel it"
    )


def auth_required(setting: str | None, host: str) -> bool:
    """``LINKFLOW_AUTH`` as set, or by default: required unless the API listens on loopback only."""
    if setting is not None:
        return setting == "required"
    return not is_loopback(host)
