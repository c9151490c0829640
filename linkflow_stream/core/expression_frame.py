"""The bindings frame of one JSONata evaluation: its bounds, its clock and its random source.

Invariant: everything an evaluation may not share with another one lives in this frame, made
fresh for each call, never on the cached compiled expression. jsonata-python's own ``$now()``
and ``$millis()`` read the time stored on a thread's "current" ``Jsonata`` object, which is
whatever expression that thread compiled or evaluated first (so the time is stale, and not the
input record's), and its ``$random()`` and ``$shuffle()`` use the process-wide unseeded generator.
Binding our own functions here shadows them: the frame is the innermost scope of the
evaluation, so every lookup, inside lambdas and ``$eval`` too, finds these first. They are bound
for every expression that can call them (its text names them or ``$eval``); one that cannot gets
none (ADR 0045). ``$toMillis`` with a picture that leaves out the date takes it from the
library's module-level clock, which no frame can shadow: ``pinned_clock`` sets what that clock
reads for the calling thread (ADR 0046).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as datetime_module
import time
import types
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from random import Random
from typing import Any, Self

from jsonata import datetimeutils, functions, jexception, jsonata

from linkflow_stream.core.clock import EPOCH, to_millis


class DeterministicFunctions:
    """``$now``, ``$millis``, ``$random`` and ``$shuffle`` of one evaluation, as the library's
    native functions are: methods found by name and called with missing arguments as ``None``."""

    def __init__(self, now: datetime, seed: str | None) -> None:
        self._millis = to_millis(now)
        self._seed = seed
        self._random: Random | None = None
        """Made at the first ``$random()``: seeding from a string hashes it (SHA-512), a cost
        every evaluation paid while few expressions draw a number."""

    def now(self, picture: str | None, timezone: str | None) -> str | None:
        """The given time as ISO 8601, or formatted by an XPath picture like ``$fromMillis``."""
        return functions.Functions.datetime_from_millis(self._millis, picture, timezone)  # type: ignore[no-any-return]

    def millis(self) -> int:
        return self._millis

    def random(self) -> float:
        return self._generator().random()

    def shuffle(self, arr: Sequence[Any] | None) -> Sequence[Any] | None:
        """The library's ``$shuffle`` (undefined stays undefined, one item stays as it is), drawing
        from the evaluation's seeded generator: the library's used the process-wide one, so a
        step decided again after a crash shuffled otherwise."""
        if arr is None or len(arr) <= 1:
            return arr
        result = list(arr)
        self._generator().shuffle(result)
        return result

    def _generator(self) -> Random:
        if self._random is None:
            # Not cryptography: $random() must repeat for the same seed so a replayed step agrees.
            self._random = Random(self._seed)  # noqa: S311
        return self._random


SIGNATURES = (("now", "<s?s?:s>"), ("millis", "<:n>"), ("random", "<:n>"), ("shuffle", "<a:a>"))
"""The library's own signatures for the functions a frame binds."""


def _templates() -> dict[str, Any]:
    """One native function per name, built once: building one parses its signature and asks
    ``inspect.signature`` for its arity, which was a tenth of the orchestrator's CPU when every
    evaluation built three (bench.profile). A frame binds a copy that calls its own methods."""
    fns = DeterministicFunctions(EPOCH, None)
    return {name: jsonata.Jsonata.function(name, signature, fns, name) for name, signature in SIGNATURES}


_TEMPLATES = _templates()


def _bound(name: str, fns: DeterministicFunctions) -> Any:
    """The template of ``name`` calling ``fns``'s method: the parsed signature is read-only once
    built, so copies share it; only the method differs."""
    native = copy.copy(_TEMPLATES[name])
    native.method = getattr(fns, name)
    return native


CALLING_NAMES = (*(f"${name}" for name, _signature in SIGNATURES), "$eval")
"""What an expression must mention to call a function the frame binds: JSONata calls a function
only by its ``$name`` (``$eval`` may build any name from strings at run time)."""


def evaluation_frame(*, timeout_ms: int, max_depth: int, now: datetime, seed: str | None, source: str) -> Any:
    """A fresh frame for one ``Jsonata.evaluate`` call; create it right before the call, since
    the timebox's clock starts here. The signatures are the library's own for these functions.

    The functions of ``SIGNATURES`` are bound only if ``source`` (the expression's text) mentions
    one of ``CALLING_NAMES``: an expression that cannot call them needs no copies (binding them
    was a sixth of a transform's evaluation, and few expressions read the clock)."""
    frame = jsonata.Jsonata.Frame(None)
    _timebox(frame, timeout_ms, max_depth)
    if any(name in source for name in CALLING_NAMES):
        fns = DeterministicFunctions(now, seed)
        for name, _signature in SIGNATURES:
            frame.bind(name, _bound(name, fns))
    return frame


def _timebox(frame: Any, timeout_ms: int, max_depth: int) -> None:
    """The bounds of the library's ``Frame.set_runtime_bounds`` (ADR 0015), checked as it checks
    them, at entry to and exit from every evaluation step, with the library's errors (D1011 depth,
    D1012 time), with one Python-level call per check (the callback, which reads
    ``time.monotonic``) instead of three (its callback, its check, its clock): the library's was
    a tenth of a transform's evaluation. ``monotonic``: a clock set back cannot stretch the limit."""
    deadline = time.monotonic() + timeout_ms / 1000
    depth = 0

    def entry(_exp: Any, _input: Any, env: Any) -> None:
        nonlocal depth
        if env.is_parallel_call:
            return
        depth += 1
        if depth > max_depth:
            raise jexception.JException("D1011", -1)
        if time.monotonic() > deadline:
            raise jexception.JException("D1012", -1, timeout_ms)

    def exit_(_exp: Any, _input: Any, env: Any, _result: Any) -> None:
        nonlocal depth
        if env.is_parallel_call:
            return
        depth -= 1
        if time.monotonic() > deadline:
            raise jexception.JException("D1012", -1, timeout_ms)

    frame.set_evaluate_entry_callback(entry)
    frame.set_evaluate_exit_callback(exit_)


_PINNED: ContextVar[datetime | None] = ContextVar("jsonata_utcnow", default=None)
"""The naive UTC time the library's clock returns in this context, if pinned."""


class _PinnedDatetime(datetime):
    """The ``datetime`` class jsonata-python's ``datetimeutils`` sees: a subclass whose
    ``utcnow`` returns the pinned time of the calling context (each thread has its own)."""

    @classmethod
    def utcnow(cls) -> Self:
        pinned = _PINNED.get()
        at = pinned if pinned is not None else datetime.now(UTC).replace(tzinfo=None)
        return cls.combine(at.date(), at.time())


def _install() -> None:
    """Give ``datetimeutils`` a ``datetime`` module whose ``datetime`` class is
    ``_PinnedDatetime``: it calls ``datetime.datetime.utcnow()`` to fill in the date of a
    ``$toMillis`` picture without one (jsonata-python 0.7), so the result depended on the wall
    clock, not the step's time. Its other uses of the module find the same names; the datetimes
    it builds are of the subclass, which differs in ``utcnow`` only."""
    shim = types.SimpleNamespace(**vars(datetime_module))
    shim.datetime = _PinnedDatetime
    datetimeutils.datetime = shim


_install()


@contextlib.contextmanager
def pinned_clock(now: datetime) -> Iterator[None]:
    """While inside, the library's own clock reads ``now`` in this thread (or task): wrap each
    evaluation, so ``$toMillis('10:00', '[H01]:[m01]')`` gives the step's date."""
    token = _PINNED.set(now.astimezone(UTC).replace(tzinfo=None))
    try:
        yield
    finally:
        _PINNED.reset(token)
