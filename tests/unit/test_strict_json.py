"""Strict JSON: what clients send is parsed as RFC 8259 JSON, which has no NaN or Infinity."""

from __future__ import annotations

import json
import math
import re

import pytest

from linkflow_stream.core.strict_json import loads, non_finite


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"n": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b'{"a": {"b": -Infinity}}', "-Infinity"),
        (b"1e999", "1e999"),
        (b"[-1E+400]", "-1E+400"),
    ],
)
def test_a_body_with_a_number_json_has_not_is_refused(raw: bytes, named: str) -> None:
    """Python's parser takes these; stored in a run they would come back as bare tokens that no
    JSON reader (a browser's included) parses."""
    with pytest.raises(ValueError, match=re.escape(named)):
        loads(raw)


def test_a_body_of_ordinary_numbers_parses_as_before() -> None:
    raw = (
        b'{"i": 1, "f": 1.5, "e": 1e300, "small": 1e-400, "neg": -0.0, "big": 123456789012345678901234567890}'
    )
    assert json.dumps(loads(raw)) == json.dumps(json.loads(raw)), "-0.0 keeps its sign, big ints their digits"


def test_the_first_non_finite_number_of_a_decoded_value_is_found() -> None:
    assert non_finite({"a": [1, 2.5, {"b": None}], "c": "NaN"}) is None, "a string is not a number"
    found = non_finite({"a": [1, {"b": [math.inf]}]})
    assert found is not None and math.isinf(found)
    found = non_finite([[[[float("nan")]]]])
    assert found is not None and math.isnan(found)
    deep: list[object] = []
    for _ in range(10_000):  # deeper than the recursion limit
        deep = [deep]
    assert non_finite(deep) is None
