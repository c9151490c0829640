"""Named secrets. Workflows hold only references (``{"secret": "NAME"}``); the value is looked up
by the executor at the moment of use, so it never enters an event, a task record or a log."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from linkflow_stream.core.node_contract import ConfigError, NodeFailure

NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
ENV_PREFIX = "LINKFLOW_SECRET_"


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secret"}


def check_reference(field: str, value: Any) -> None:
    """A literal string or a well-formed ``{"secret": "NAME"}``."""
    if isinstance(value, str):
        return
    if not is_reference(value) or not isinstance(value["secret"], str) or not NAME.match(value["secret"]):
        raise ConfigError(field, 'must be a string or {"secret": "NAME"} with NAME in A-Z, 0-9 and _')


class Secrets:
    """Secrets from ``LINKFLOW_SECRETS`` (JSON) first, then ``LINKFLOW_SECRET_<NAME>`` variables."""

    def __init__(self, configured: Mapping[str, SecretStr]) -> None:
        self._configured = dict(configured)

    def resolve(self, value: Any) -> str:
        """The plain value of a literal or a reference; a missing secret fails the node."""
        if not is_reference(value):
            return str(value)
        name = value["secret"]
        secret = self._configured.get(name)
        if secret is not None:
            return secret.get_secret_value()
        from_env = os.environ.get(ENV_PREFIX + name)
        if from_env is None:
            raise NodeFailure("validation", f"secret {name} is not configured on this worker")
        return from_env
