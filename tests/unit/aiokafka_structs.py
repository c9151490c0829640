"""Every protocol struct aiokafka defines, and values drawn from a struct's schema: shared by the
tests of the compiled readers (ADR 0067) and writers (ADR 0069), which check them against
aiokafka's own decoder and encoder class by class."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import aiokafka.protocol
from aiokafka.protocol import types
from aiokafka.protocol.struct import Struct
from hypothesis import strategies as st

GROUP_PROTOCOL = ("aiokafka.coordinator.protocol", "aiokafka.coordinator.assignors.sticky.sticky_assignor")
"""Modules outside ``aiokafka.protocol`` whose structs are coded too (a group's member
metadata and assignments, the sticky assignor's user data)."""


def _structs() -> list[type[Struct]]:
    found: dict[str, type[Struct]] = {}
    names = [f"aiokafka.protocol.{m.name}" for m in pkgutil.iter_modules(aiokafka.protocol.__path__)]
    for name in [*names, *GROUP_PROTOCOL]:
        loaded = importlib.import_module(name)
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, Struct) and value.SCHEMA.fields:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[k] for k in sorted(found)]


STRUCTS = _structs()


def struct_id(cls: type[Struct]) -> str:
    """A test id: the struct's module and class."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def values(field: Any) -> st.SearchStrategy[Any]:
    """Values of ``field`` that Kafka's protocol allows."""
    bounds = {types.Int8: 8, types.Int16: 16, types.Int32: 32, types.Int64: 64}
    if field in bounds:
        return st.integers(-(2 ** (bounds[field] - 1)), 2 ** (bounds[field] - 1) - 1)
    if field is types.UInt32:
        return st.integers(0, 2**32 - 1)
    if field is types.Float64:
        return st.floats(allow_nan=False)
    if field is types.Boolean:
        return st.booleans()
    if field in (types.UnsignedVarInt32, types.VarInt32):
        return st.integers(0, 2**31 - 1)
    if field is types.VarInt64:
        return st.integers(-(2**40), 2**40)
    if field is types.TaggedFields:
        return st.just({})
    if field in (types.Bytes, types.CompactBytes):
        return st.none() | st.binary(max_size=6)
    if isinstance(field, types.Schema):
        return st.tuples(*(values(f) for f in field.fields))
    if isinstance(field, types.Array):
        return st.none() | st.lists(values(field.array_of), max_size=3)
    if isinstance(field, types.String):
        return st.none() | st.text(max_size=4)
    raise AssertionError(f"no strategy for {field!r}")
