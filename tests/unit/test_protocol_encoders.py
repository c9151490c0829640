"""Compiled Kafka request writers (ADR 0069) against aiokafka's own encoder, class by class.

Every protocol struct aiokafka defines (requests, responses and headers of every version) gets
values drawn from its schema, and, in a second test, values of any field replaced now and then by
one of the wrong type or range. The compiled writer must give aiokafka's bytes to the byte, or fail
with aiokafka's error, never encode what aiokafka refuses.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.protocol import types
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v11
from aiokafka.protocol.struct import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.kafka import protocol_encoders
from linkflow_stream.kafka.protocol_encoders import encode, original_encode, struct_writer
from tests.unit.aiokafka_structs import STRUCTS, struct_id, values

_WRONG = [None, "x", "é", b"x", 2**70, -(2**70), 2**33, -1, 1.5, True, [1], [b"x"], (), (1, 2), {}]
_NOT_SEQUENCES = [bytearray(b"ab"), {0: 7, 1: 9}, {0: 7, 1: 9, 2: 1, 3: 4, 4: 5}, frozenset({1, 2}), range(5)]
ODD = (
    st.sampled_from([*_WRONG, *_NOT_SEQUENCES])
    | st.builds(lambda n: iter(range(n)), st.integers(0, 6))
    | st.builds(lambda n: {i: i + 7 for i in range(n)}.values(), st.integers(0, 6))
)
"""Values of a wrong type or range for some field or other."""


def loose(field: Any) -> st.SearchStrategy[Any]:
    """``values(field)``, or now and then a value that does not fit it, at any depth."""
    if isinstance(field, types.Schema):
        return st.tuples(*(loose(f) for f in field.fields)) | ODD
    if isinstance(field, types.Array):
        return st.none() | st.lists(loose(field.array_of), max_size=3) | ODD
    if field is types.TaggedFields:
        return st.dictionaries(st.integers(-1, 3), st.binary(max_size=3) | ODD, max_size=2) | ODD
    if field in (types.UnsignedVarInt32, types.VarInt32, types.VarInt64):
        return st.integers(-(2**65), 2**65) | ODD
    return values(field) | ODD


def _made(cls: type[Struct], field_values: tuple[Any, ...]) -> Struct:
    """An instance holding ``field_values`` (headers' own ``__init__`` takes other arguments)."""
    made = cls.__new__(cls)
    made.__dict__.update(zip(cls.SCHEMA.names, field_values, strict=True))
    return made


def _outcome(encoder: Any, value: Struct) -> tuple[str, Any]:
    try:
        return "bytes", encoder(value)
    except Exception as exc:  # noqa: BLE001 - both encoders must fail alike
        return "error", type(exc).__name__


def test_every_struct_gets_a_compiled_writer() -> None:
    assert len(STRUCTS) > 150, len(STRUCTS)
    missing = [cls.__qualname__ for cls in STRUCTS if struct_writer(cls) is None]
    assert not missing, missing


@pytest.mark.parametrize("cls", STRUCTS, ids=struct_id)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_the_compiled_writer_writes_aiokafkas_bytes(cls: type[Struct], data: st.DataObject) -> None:
    value = _made(cls, data.draw(st.tuples(*(values(f) for f in cls.SCHEMA.fields))))
    expected = original_encode(value)
    writer = struct_writer(cls)
    assert writer is not None
    assert writer([value.__dict__[name] for name in cls.SCHEMA.names]) == expected  # not by the fallback
    assert encode(value) == expected


@pytest.mark.parametrize("cls", STRUCTS, ids=struct_id)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_values_that_do_not_fit_fail_as_in_aiokafka(cls: type[Struct], data: st.DataObject) -> None:
    value = _made(cls, data.draw(st.tuples(*(loose(f) for f in cls.SCHEMA.fields))))
    assert _outcome(encode, value) == _outcome(original_encode, value)


@pytest.mark.parametrize(
    "value",
    [0, 1, 127, 128, 300, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, -1, -64, -65, -(2**31), -(2**40)],
)
def test_varints_are_aiokafkas_to_the_bit(value: int) -> None:
    """Masks and zigzag as aiokafka has them, at each boundary (one byte, five bytes, the sign)."""
    assert protocol_encoders._unsigned_varint32(value) == types.UnsignedVarInt32.encode(value)
    assert protocol_encoders._varint32(value) == types.VarInt32.encode(value)


class _Pair(Struct):
    SCHEMA = types.Schema(("a", types.Int32), ("b", types.Int32))


def test_a_schema_given_to_an_instance_is_the_one_written() -> None:
    """aiokafka reads ``self.SCHEMA`` at each encode; the writers are kept by schema, not class."""
    pair = _Pair(1, 2)
    assert encode(pair) == original_encode(pair) == bytes(3) + b"\x01" + bytes(3) + b"\x02"
    pair.SCHEMA = types.Schema(("a", types.Int64), ("b", types.Int64))  # type: ignore[misc]
    assert encode(pair) == original_encode(pair) == bytes(7) + b"\x01" + bytes(7) + b"\x02"


def test_items_that_are_not_tuples_or_lists_go_to_aiokafka() -> None:
    """A fetch request's partition is written by one ``pack(*item)``, which would take a dict's
    keys, or a set or an iterator, where aiokafka reads ``item[i]`` (or fails)."""
    keyed = {0: 0, 1: 5, 2: 1000, 3: 0, 4: 1024}
    request = FetchRequest(500, 1, 1024, 1, [("t", [(0, 5, 1024)])]).build(FetchRequest_v11)
    request.topics = [("t", [keyed])]  # type: ignore[attr-defined]
    assert encode(request) == original_encode(request)
    request.topics = [("t", [iter((0, 5, 1000, 0, 1024))])]  # type: ignore[attr-defined]
    assert _outcome(encode, request) == _outcome(original_encode, request) == ("error", "TypeError")


def test_a_fetch_request_as_the_consumer_builds_it() -> None:
    """The request the engine's consumers send most: 20 partitions of one topic."""
    request = FetchRequest(
        500, 1, 52428800, 1, [("linkflow.events", [(p, 1000 + p, 1048576) for p in range(20)])]
    ).build(FetchRequest_v11)
    header = request.build_request_header(correlation_id=7, client_id="linkflow")
    assert encode(request) == original_encode(request)
    assert encode(header) == original_encode(header)
    assert len(encode(request)) > 20 * 28  # every partition written


def test_install_replaces_the_encoder_once_and_uninstall_restores_it() -> None:
    before = Struct.encode
    protocol_encoders.install()
    patched = Struct.encode
    protocol_encoders.install()
    assert Struct.encode is patched is not before
    protocol_encoders.uninstall()
    assert Struct.encode is before
