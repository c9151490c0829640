"""The engine's event loop choice (ADR 0062)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from pydantic import ValidationError

from linkflow_stream.runtime.event_loop import loop_factory, loop_name
from linkflow_stream.settings import Settings


def test_uvloop_is_the_default_and_asyncio_can_be_chosen() -> None:
    assert Settings().event_loop == "uvloop"
    factory = loop_factory(Settings().event_loop)
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop) and loop_name(loop) == "uvloop"
    finally:
        loop.close()
    assert loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert runner.get_loop().__class__.__module__.startswith("asyncio")
        assert loop_name(runner.get_loop()) == "asyncio"


def test_an_unknown_loop_is_refused_saying_which_are_known() -> None:
    with pytest.raises(ValidationError, match="uvloop"):
        Settings(event_loop="trio")  # type: ignore[arg-type]
