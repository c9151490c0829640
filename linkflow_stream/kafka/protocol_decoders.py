"""Kafka responses decoded by compiled readers instead of aiokafka's field-by-field walk (ADR 0067).

aiokafka decodes every response (and its header) through its protocol schema one field at a
time: each integer is a classmethod call, a ``BytesIO.read``, a ``struct.unpack`` and a wrapper.
A fetch response names every partition the consumer fetches, whether it holds records or not
(aiokafka has no incremental fetch sessions): the views' consumer reads 20 partitions, so each of
its fetches decodes some 170 fields. Measured on a loaded engine under cProfile, response
decoding was an eighth of all the engine's time at one caller, and the Kafka client a sixth to a
quarter of its samples at any load (issue 13).

``install`` replaces ``Struct.decode`` (through which aiokafka decodes every response and header,
and a consumer group's member metadata and assignments) with one that runs a reader compiled once
per class from the class's own ``SCHEMA``: consecutive fixed-width fields are read by one
``struct.unpack_from`` over the bytes, strings, bytes, arrays and varints by small functions working
on the bytes and an offset. It builds the same object from the same values (``cls(*values)``):
tuples for nested schemas, lists for arrays, ``None`` for null strings, bytes and arrays. A class
whose schema holds a type this module does not know keeps aiokafka's decoder, and so does any decode
the compiled reader cannot finish (short or malformed bytes): aiokafka's decoder then runs from the
same position and raises its own error. aiokafka is pinned in ``pyproject.toml``;
``tests/unit/test_protocol_decoders.py`` decodes every response class aiokafka defines both ways and
fails if one differs.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

from aiokafka.protocol import types
from aiokafka.protocol.struct import Struct

from linkflow_stream.kafka.protocol_fields import FIXED_CODES, Unknown

Reader = Callable[[bytes, int], tuple[Any, int]]
"""``(data, offset) -> (value, offset after it)``."""

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")

_original_decode: Callable[..., Any] | None = None
StructReader = Callable[[bytes, int], tuple[tuple[Any, ...], int]]
"""``(data, offset) -> (a struct's field values, offset after them)``."""
_readers: dict[type, StructReader | None] = {}


def install() -> None:
    """Decode every aiokafka response with compiled readers, from now on, in this process
    (idempotent)."""
    global _original_decode
    if _original_decode is not None:
        return
    _original_decode = Struct.decode.__func__
    Struct.decode = classmethod(decode)


def uninstall() -> None:
    """aiokafka's own decoder again (tests)."""
    global _original_decode
    if _original_decode is not None:
        Struct.decode = classmethod(_original_decode)
        _original_decode = None


def original_decode(cls: type[Struct], data: io.BytesIO | bytes) -> Any:
    """aiokafka's decoder, whether or not ``install`` ran."""
    decode = _original_decode or Struct.decode.__func__
    return decode(cls, data)


def decode(cls: type[Struct], data: io.BytesIO | bytes) -> Any:
    """``Struct.decode`` by ``cls``'s compiled reader, or aiokafka's decoder where it cannot."""
    reader = _readers[cls] if cls in _readers else _readers.setdefault(cls, struct_reader(cls))
    if reader is not None:
        if isinstance(data, bytes):
            raw, start = data, 0
        else:
            raw, start = data.getvalue(), data.tell()
        try:
            values, end = reader(raw, start)
        except (struct.error, ValueError, IndexError):
            return original_decode(cls, data)  # reads it again from ``start`` and says what is wrong
        if not isinstance(data, bytes):
            data.seek(end)
        return cls(*values)
    return original_decode(cls, data)


def struct_reader(cls: type[Struct]) -> StructReader | None:
    """The compiled reader of ``cls``'s fields, or ``None`` if its schema holds an unknown type."""
    try:
        return _schema_reader(cls.SCHEMA)
    except (Unknown, AttributeError, TypeError):
        return None


def _schema_reader(schema: types.Schema) -> StructReader:
    steps: list[struct.Struct | Reader] = []
    fixed = ""
    for field in schema.fields:
        code = FIXED_CODES.get(field)
        if code is not None:
            fixed += code
            continue
        if fixed:
            steps.append(struct.Struct(">" + fixed))
            fixed = ""
        steps.append(_reader(field))
    if fixed:
        steps.append(struct.Struct(">" + fixed))
    if len(steps) == 1 and isinstance(steps[0], struct.Struct):
        only = steps[0]
        size = only.size

        def fixed_only(data: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
            return only.unpack_from(data, pos), pos + size

        return fixed_only

    def read(data: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
        out: list[Any] = []
        for step in steps:
            if type(step) is struct.Struct:
                out += step.unpack_from(data, pos)
                pos += step.size
            else:
                value, pos = step(data, pos)  # type: ignore[operator]
                out.append(value)
        return tuple(out), pos

    return read


def _reader(field: Any) -> Reader:
    code = FIXED_CODES.get(field)
    if code is not None:
        one = struct.Struct(">" + code)
        return lambda data, pos: (one.unpack_from(data, pos)[0], pos + one.size)
    if isinstance(field, types.Schema):
        return _schema_reader(field)
    if isinstance(field, types.CompactArray):  # before Array: it is one
        return _array(_reader(field.array_of), _compact_length)
    if isinstance(field, types.Array):
        return _array(_reader(field.array_of), _int32_length)
    if isinstance(field, types.CompactString):  # before String: it is one
        return _text(field.encoding, _compact_length)
    if isinstance(field, types.String):
        return _text(field.encoding, _int16_length)
    if field is types.CompactBytes:
        return _blob(_compact_length)
    if field is types.Bytes:
        return _blob(_int32_length)
    if field is types.UnsignedVarInt32:
        return _unsigned_varint32
    if field is types.VarInt32:
        return _varint32
    if field is types.VarInt64:
        return _varint64
    if field is types.TaggedFields:
        return _tagged_fields
    raise Unknown(repr(field))


def _int16_length(data: bytes, pos: int) -> tuple[int, int]:
    return _INT16.unpack_from(data, pos)[0], pos + 2


def _int32_length(data: bytes, pos: int) -> tuple[int, int]:
    return _INT32.unpack_from(data, pos)[0], pos + 4


def _compact_length(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _unsigned_varint32(data, pos)
    return value - 1, pos


def _array(item: Reader, length_of: Callable[[bytes, int], tuple[int, int]]) -> Reader:
    def array(data: bytes, pos: int) -> tuple[list[Any] | None, int]:
        length, pos = length_of(data, pos)
        if length == -1:
            return None, pos
        out = []
        for _ in range(length):  # a length below -1 reads nothing, as aiokafka's ``range`` does
            value, pos = item(data, pos)
            out.append(value)
        return out, pos

    return array


def _text(encoding: str, length_of: Callable[[bytes, int], tuple[int, int]]) -> Reader:
    blob = _blob(length_of)

    def text(data: bytes, pos: int) -> tuple[str | None, int]:
        value, pos = blob(data, pos)
        return None if value is None else value.decode(encoding), pos

    return text


def _blob(length_of: Callable[[bytes, int], tuple[int, int]]) -> Reader:
    def blob(data: bytes, pos: int) -> tuple[bytes | None, int]:
        length, pos = length_of(data, pos)
        if length < 0:
            return None, pos
        end = pos + length
        if end > len(data):
            raise ValueError("buffer underrun decoding bytes")
        return data[pos:end], end

    return blob


def _varint(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]  # IndexError past the end: aiokafka's decoder reports it
        pos += 1
        if not b & 0x80:
            return value | (b << shift), pos
        value |= (b & 0x7F) << shift
        shift += 7
        if shift > limit:
            raise ValueError(f"invalid varint {value}")


def _unsigned_varint32(data: bytes, pos: int) -> tuple[int, int]:
    return _varint(data, pos, 28)


def _varint32(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(data, pos, 28)
    return (value >> 1) ^ -(value & 1), pos


def _varint64(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(data, pos, 63)
    return (value >> 1) ^ -(value & 1), pos


def _tagged_fields(data: bytes, pos: int) -> tuple[dict[int, bytes], int]:
    count, pos = _unsigned_varint32(data, pos)
    out: dict[int, bytes] = {}
    previous = -1
    for _ in range(count):
        tag, pos = _unsigned_varint32(data, pos)
        if tag <= previous:
            raise ValueError(f"invalid or out-of-order tag {tag}")
        previous = tag
        size, pos = _unsigned_varint32(data, pos)
        out[tag] = data[pos : pos + size]
        pos = min(pos + size, len(data))  # a short value ends at the end, as aiokafka's read does
    return out, pos
