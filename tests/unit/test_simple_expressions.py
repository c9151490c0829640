"""The interpreter-free path for simple JSONata expressions (ADR 0066) against jsonata-python.

Its one promise: where it answers, the answer is the interpreter's, value and type alike; where
the interpreter would fail or give undefined, it does not answer. The properties below generate
expressions from the grammar it takes (and a few forms it must refuse) over generated inputs,
and compare with ``expressions.interpreted``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkflow_stream.core import expressions
from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.core.simple_expressions import UNSURE, simple_form

NOW = datetime(2026, 12, 3, tzinfo=UTC)
NAMES = ["input", "nodes", "a", "b", "n", "s", "flag", "items", "nul"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**1100, -(2**1100), 2**53 + 1, 2**53, 9007199254740993.0]),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=False, allow_infinity=True),
    st.sampled_from([0.5, -2.5, 1e308, 3.0]),
    st.text(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    ),
    max_leaves=12,
)
plain = st.one_of(scalars, scalars, scalars, values)  # mostly what the closure handles
contexts = st.dictionaries(
    st.sampled_from(NAMES),
    st.one_of(plain, st.dictionaries(st.sampled_from(NAMES), plain, max_size=5)),
    max_size=6,
)

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join)
literals = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60).map(str),
    st.sampled_from(["true", "false", "0", "1", "2", "0.5", "1e3", "-3", "null", "'ab'", '"x"', "''"]),
    st.sampled_from(["true", "false", "1", "'b'"]),
)
refused = st.sampled_from(
    ["input.items[0]", "$sum(input.items)", "input.*", "$", "input.a ? 1 : 2", "[1, 2]"]
)
ops = st.sampled_from(["+", "-", "*", "/", "%", "=", "!=", "<", "<=", ">", ">=", "and", "or", "&", "in"])


def _binary(parts: st.SearchStrategy[str], operators: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(parts, st.sampled_from(operators), parts).map(lambda t: f"({t[0]} {t[1]} {t[2]})")


numbers = st.recursive(
    st.one_of(paths, st.sampled_from(["0", "1", "2", "-3", "0.5", "1e3", "1.0", "2.5"])),
    lambda inner: st.one_of(_binary(inner, ["+", "-", "*", "/"]), inner.map(lambda e: f"-{e}")),
    max_leaves=5,
)
strings = st.recursive(
    st.one_of(paths, st.sampled_from(["'ab'", "''", '"x"', "'b'"])),
    lambda inner: _binary(inner, ["&"]),
    max_leaves=3,
)
booleans = st.recursive(
    st.one_of(
        paths,
        st.sampled_from(["true", "false"]),
        _binary(numbers, ["=", "!=", "<", "<=", ">", ">="]),
        _binary(strings, ["=", "!=", "<", ">="]),
    ),
    lambda inner: _binary(inner, ["and", "or", "=", "!="]),
    max_leaves=5,
)


def _expressions() -> st.SearchStrategy[str]:
    return st.one_of(numbers, strings, booleans, _untyped())


def _untyped() -> st.SearchStrategy[str]:
    return st.recursive(
        st.one_of(paths, paths, literals, literals, refused),
        lambda inner: st.one_of(
            st.tuples(inner, ops, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"-{e}"),
            st.lists(st.tuples(st.sampled_from(["k", "m", "n"]), inner), min_size=1, max_size=3).map(
                lambda pairs: "{" + ", ".join(f"'{k}': {v}" for k, v in pairs) + "}"
            ),
        ),
        max_leaves=6,
    )


def _interpreted(source: str, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "value", expressions.interpreted(source, data, 1.0, NOW, "s", expressions.MAX_DEPTH)
    except NodeFailure as exc:
        return "error", exc.error_type


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (``1`` is not ``1.0``, nor ``True``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=_expressions(), data=contexts)
def test_an_answer_is_always_the_interpreters(source: str, data: dict[str, Any]) -> None:
    form = expressions.simple_form_of(source)
    if form is None:
        return
    fast = form(data)
    if fast is UNSURE:
        return
    kind, slow = _interpreted(source, data)
    assert kind == "value", f"{source} over {data}: the interpreter fails ({slow}), the closure gave {fast!r}"
    assert _same(fast, slow), f"{source} over {data}: closure {fast!r}, interpreter {slow!r}"
    assert _same(expressions.evaluate(source, data, now=NOW, seed="s"), slow)


@settings(max_examples=300, deadline=None)
@given(data=st.fixed_dictionaries({"input": st.fixed_dictionaries({"n": st.integers(-(2**40), 2**40)})}))
def test_the_diamonds_expressions_are_answered_and_agree(data: dict[str, Any]) -> None:
    n = data["input"]["n"]
    context = {**data, "nodes": {"a": {"n": n}, "b": n * 2, "c": n + 1, "d": n - 1}}
    for source in ("{'n': input.n}", "nodes.a.n * 2", "nodes.a.n + 1", "nodes.b + nodes.c + nodes.d"):
        form = expressions.simple_form_of(source)
        assert form is not None, source
        fast = form(context)
        assert fast is not UNSURE, source
        assert _same(fast, _interpreted(source, context)[1]), source


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("input.status = 200 and input.ok", {"input": {"status": 200, "ok": True}}, True),
        ("input.status = 200.0", {"input": {"status": 200}}, True),
        ("(input.n = 1.0) and (1 != 2)", {"input": {"n": 1}}, True),
        ("input.a < input.b", {"input": {"a": "apple", "b": "banana"}}, True),
        ("input.a & '-' & input.b", {"input": {"a": "x", "b": "y"}}, "x-y"),
        ("-input.n", {"input": {"n": 3}}, -3),
        ("input.n / 2", {"input": {"n": 3}}, 1.5),
        ("input.n / 2", {"input": {"n": 4}}, 2),
        ("{'o': input.o, 'x': 1}", {"input": {"o": {"k": [1, None]}}}, {"o": {"k": [1, None]}, "x": 1}),
        ("input.big + 1", {"input": {"big": 2**60}}, 2**60),  # through float, as the interpreter
        ("false and input.missing", {"input": {}}, False),
    ],
)
def test_examples_answered_without_the_interpreter(source: str, data: dict[str, Any], expected: Any) -> None:
    form = expressions.simple_form_of(source)
    assert form is not None
    fast = form(data)
    assert _same(fast, expected), fast
    assert _same(_interpreted(source, data), ("value", expected))


@pytest.mark.parametrize(
    ("source", "data"),
    [
        ("input.missing", {"input": {}}),  # undefined
        ("input.nul", {"input": {"nul": None}}),  # null
        ("input.items", {"input": {"items": [1, 2]}}),  # an array
        ("input.items.n", {"input": {"items": [{"n": 1}]}}),  # a path mapped over an array
        ("input.s + 1", {"input": {"s": "1"}}),  # the interpreter's T2001
        ("input.n / 0", {"input": {"n": 1}}),
        ("input.flag and true", {"input": {"flag": 1}}),  # a number cast to boolean
        ("input.n = 'x'", {"input": {"n": 1}}),
        ("input.n * input.n", {"input": {"n": 1e308}}),  # infinite: the interpreter's D1001
        ("input.n + 1", {"input": {"n": 2**1100}}),  # no float holds it: the interpreter fails
        ("input.n = 1", {"input": {"n": 2**1100}}),
        ("input.n < 1.5", {"input": {"n": 2**1100}}),
        ("-input.n", {"input": {"n": 2**1100}}),
    ],
)
def test_what_only_the_interpreter_may_say_is_left_to_it(source: str, data: dict[str, Any]) -> None:
    form = expressions.simple_form_of(source)
    assert form is not None
    assert form(data) is UNSURE
    try:
        through_evaluate: tuple[str, Any] = ("value", expressions.evaluate(source, data, now=NOW, seed="s"))
    except NodeFailure as exc:
        through_evaluate = ("error", exc.error_type)
    expected = _interpreted(source, data)
    assert through_evaluate[0] == expected[0] and _same(through_evaluate[1], expected[1])


@pytest.mark.parametrize(
    "source",
    [
        "input.items[0]",
        "$sum(input.items)",
        "input.*",
        "input.a ? 1 : 2",
        "{'k': 1, 'k': 2}",
        "input.n % 2",
        "$now()",
        "input.items[]",
        "null",
        "input{'k': n}",
        "(input.a; input.b)",
    ],
)
def test_other_forms_keep_the_interpreter(source: str) -> None:
    assert simple_form(expressions.compile_expression(source).ast) is None


def test_a_syntax_error_is_reported_by_the_interpreter() -> None:
    assert expressions.simple_form_of("input.") is None
    with pytest.raises(NodeFailure, match="JSONata"):
        expressions.evaluate("input.", {"input": {}})


@pytest.mark.parametrize(
    "source",
    [
        "input.n",
        "(input.n)",
        "input.n * 2 + 1",
        "-(input.n - 3)",
        "input.n >= 2 and (input.s = 'x' or false)",
        "input.s & 'y'",
        "{'a': input.n, 'b': {'c': input.s}}",
        "input.n / 4 != 0.5",
    ],
)
def test_the_simple_forms_are_answered_over_plain_values(source: str) -> None:
    """Guards the property above against passing by answering nothing."""
    data = {"input": {"n": 2, "s": "x"}}
    form = expressions.simple_form_of(source)
    assert form is not None
    fast = form(data)
    assert fast is not UNSURE
    assert _same(fast, _interpreted(source, data)[1])
