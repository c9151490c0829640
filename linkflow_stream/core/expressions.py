"""JSONata expressions, parsed once and cached: shared by transform, condition, mapping and validation.

Invariants (ADR 0015):
- an evaluation stops at its time limit (failure class ``timeout``) and at its depth limit
  (``expression_error``), so a runaway expression cannot hold its thread for longer;
- given ``now`` and ``seed``, ``$now()``, ``$millis()``, ``$random()`` and ``$shuffle()`` return
  values that depend on those arguments only, as does the date ``$toMillis`` fills in for a
  picture without one, so evaluating again for the same input gives the same result;
- an evaluation never writes to a cached compiled expression, so threads may share the cache.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import lru_cache
from typing import Any

import jsonata

from linkflow_stream.core import clock
from linkflow_stream.core.expression_frame import evaluation_frame, pinned_clock
from linkflow_stream.core.node_contract import ConfigError, NodeFailure
from linkflow_stream.core.simple_expressions import UNSURE, Form, simple_form

DEFAULT_TIMEOUT_SECONDS = 1.0
"""Time limit of an evaluation whose caller gives none."""

MAX_DEPTH = 1000
"""Deepest nesting of evaluation steps: about 300 levels of non-tail recursion in a user
function, far more than any real transform needs, and below the depth (~2200) where Python's own
recursion limit (10 000 frames, which jsonata-python sets at import) would stop it less clearly."""

TIMEOUT_CODE = "D1012"
DEPTH_CODE = "D1011"


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    """The parsed expression; raises ``ValueError`` with JSONata's message on a syntax error."""
    # The constructor makes the new object its thread's "current" instance, which every later
    # evaluation on that thread uses as scratch space (it writes ``input`` and ``environment``
    # on it), while ``evaluate`` roots each call's frame at the compiled object's
    # ``environment``. A cached object that is also some thread's scratch could therefore leak
    # one evaluation's variables into another running on another thread. Putting the previous
    # current instance back leaves the cached object read-only; each thread evaluates through a
    # private copy that the library makes on first use.
    #
    # Input validation is off: jsonata-python walks the whole input at every evaluation to check
    # it holds JSON types only, which made each node's expression cost grow with the outputs of
    # every node before it (a 200-node chain: 2 ms an evaluation instead of 0.14 ms, ADR 0039).
    # What expressions see passes that check by construction: run inputs and task outputs are
    # decoded JSON (they cross Kafka as JSON text, ADR 0005), and an inline node's output is a
    # JSONata result, made of the types the check accepts.
    previous = getattr(jsonata.Jsonata.CURRENT, "jsonata", None)
    try:
        compiled = jsonata.Jsonata(source)
    except Exception as exc:
        raise ValueError(str(exc)) from exc
    finally:
        if previous is not None:
            jsonata.Jsonata.CURRENT.jsonata = previous
        elif hasattr(jsonata.Jsonata.CURRENT, "jsonata"):
            del jsonata.Jsonata.CURRENT.jsonata
    compiled.set_validate_input(False)
    return compiled


def require_expression(config: dict[str, Any], field: str = "expression") -> str:
    """Validate that ``config[field]`` is a JSONata expression that parses."""
    source = config.get(field)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(field, "a JSONata expression (non-empty string) is required")
    try:
        compile_expression(source)
    except ValueError as exc:
        raise ConfigError(field, f"JSONata syntax error: {exc}") from exc
    return source


def evaluate(
    source: str,
    data: dict[str, Any],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    now: datetime | None = None,
    seed: str | None = None,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Evaluate over ``data`` in the calling thread, within ``timeout_seconds`` and ``max_depth``.

    ``$now()`` and ``$millis()`` return ``now`` (default: the clock when evaluation starts),
    which is also the date ``$toMillis`` gives a time without one, and ``$random()`` and
    ``$shuffle()`` draw from one generator seeded with ``seed`` (default: unseeded). Raises
    ``NodeFailure``: ``timeout`` past the time limit, ``expression_error`` past the depth limit or
    on any other evaluation error. Both are non-retryable: the same expression over the same data
    does the same work again.

    The limit is checked at every evaluation step, so one step that is slow on its own (building
    a range of millions of items, or converting a result that large) can overrun it; the result is
    then dropped and the evaluation fails as ``timeout`` all the same.

    A simple expression over plain values is answered without the interpreter, with the result
    it would give (``simple_expressions``, ADR 0066); anything else is the interpreter's.
    """
    if type(data) is dict and (form := simple_form_of(source)) is not None:
        try:
            result = form(data)
        except (ArithmeticError, ValueError, TypeError, RecursionError):
            result = UNSURE  # not expected (the closure checks what it meets); the interpreter says
        if result is not UNSURE:
            return result
    return interpreted(source, data, timeout_seconds, now, seed, max_depth)


@lru_cache(maxsize=4096)
def simple_form_of(source: str) -> Form | None:
    """The interpreter-free closure of ``source`` (``simple_expressions``), once per source;
    ``None`` for any other expression, a syntax error included (the interpreter reports it)."""
    try:
        return simple_form(compile_expression(source).ast)
    except ValueError:
        return None


def interpreted(
    source: str,
    data: dict[str, Any],
    timeout_seconds: float,
    now: datetime | None,
    seed: str | None,
    max_depth: int,
) -> Any:
    """``evaluate`` by jsonata-python alone, whatever the expression."""
    started = time.monotonic()
    at = now if now is not None else clock.now()
    try:
        frame = evaluation_frame(
            timeout_ms=max(1, round(timeout_seconds * 1000)),
            max_depth=max_depth,
            now=at,
            seed=seed,
            source=source,
        )
        with pinned_clock(at):
            result = compile_expression(source).evaluate(data, frame)
    except Exception as exc:
        raise _failure(exc, timeout_seconds, max_depth) from exc
    if time.monotonic() - started > timeout_seconds:
        raise _timed_out(timeout_seconds)
    return result


def _failure(exc: Exception, timeout_seconds: float, max_depth: int) -> NodeFailure:
    code = _bound_hit(exc)
    if code == TIMEOUT_CODE:
        return _timed_out(timeout_seconds)
    if code == DEPTH_CODE or isinstance(exc, RecursionError):
        return NodeFailure(
            "expression_error",
            f"JSONata evaluation stopped at its recursion depth limit of {max_depth} "
            "(make the recursion shallower or tail-recursive)",
            retryable=False,
        )
    return NodeFailure("expression_error", f"JSONata evaluation failed: {exc}", retryable=False)


def _timed_out(timeout_seconds: float) -> NodeFailure:
    return NodeFailure(
        "timeout",
        f"JSONata evaluation stopped at its time limit of {timeout_seconds:g} s",
        retryable=False,
    )


def _bound_hit(exc: BaseException) -> str | None:
    """D1012 or D1011 if a bound stopped the evaluation. Functions such as ``$eval`` wrap the
    error they catch in their own (D3121), so the chain of causes is searched too."""
    visited: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in visited:
        visited.add(id(link))
        code = getattr(link, "error", None)
        if code in (TIMEOUT_CODE, DEPTH_CODE):
            return str(code)
        link = link.__cause__ or link.__context__
    return None
