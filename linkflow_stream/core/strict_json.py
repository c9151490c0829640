"""JSON as RFC 8259 defines it, for what clients send: no ``NaN``, no ``Infinity``.

Python's parser takes both, and a number such as ``1e999`` as infinity. Stored in a run, each
would come back in every answer as a bare token that no JSON parser reads (a browser's
included), so one such input would break a whole page of runs (ADR 0049). The HTTP APIs parse
bodies with ``loads``; the Kafka intakes parse JSON records with it and check what an Avro record
carries with ``non_finite``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def loads(raw: bytes | str) -> Any:
    """``raw`` parsed as JSON; ``ValueError`` naming the number for ``NaN``, ``Infinity`` or a
    number beyond a double."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)


def non_finite(value: Any) -> float | None:
    """The first ``NaN`` or infinity in a decoded JSON value, or ``None`` (walked without
    recursion: the value may nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity; send null or a string)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is beyond the range of a double")
    return value
