"""Integration tests' own pytest hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

ON_BOTH_LOOPS = ("test_code_sandbox", "test_code_timeout_escalation")
"""Modules whose tests run on asyncio's loop and on uvloop, the engine's (ADR 0062): the code
sandbox spawns processes and reads pipes, where the two loops' implementations differ most."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Both loops for ``ON_BOTH_LOOPS``; asyncio's alone (pytest-asyncio's default, one hidden
    parameter) for every other test here, since the hook must name at least one."""
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rsplit(".", 1)[-1] in ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
