"""Kafka requests encoded by compiled writers instead of aiokafka's field-by-field walk (ADR 0069).

The other half of ADR 0067: aiokafka encodes every request (and its header) through its
protocol schema one field at a time, each integer a classmethod call, a ``struct.pack`` and a
bytes object. A fetch request names every partition the consumer reads (no incremental fetch
sessions in aiokafka), 20 for the views, five integers each: measured, encoding one took about
100 us, and an engine sends several fetches per run at low load.

``install`` replaces ``Struct.encode`` with one that runs a writer compiled once per class from
the class's own ``SCHEMA``: consecutive fixed-width fields are packed by one ``struct.pack``,
strings, bytes, arrays and unsigned varints by small functions appending to a list of parts that
is joined once. It writes exactly aiokafka's bytes, quirks included (``str()`` of a string field's
value, the 32-bit masks of the varints); the two types whose aiokafka encoding is odd
(``VarInt64``, ``TaggedFields``, which write what Kafka would not read back) are written by
aiokafka's own ``encode``, so their bytes cannot differ either. Whatever a compiled writer cannot
encode (a value of the wrong type or range, a tuple of the wrong length) goes to aiokafka's encoder,
which raises its own error. aiokafka is pinned in ``pyproject.toml``;
``tests/unit/test_protocol_encoders.py`` encodes every struct aiokafka defines both ways and fails
if one byte differs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.protocol import types
from aiokafka.protocol.struct import Struct

from linkflow_stream.kafka.protocol_fields import FIXED_CODES, Unknown

Writer = Callable[[Any, list[bytes]], None]
"""``(value, parts)``: appends the value's bytes to ``parts``."""
StructWriter = Callable[[Sequence[Any]], bytes]
"""``(a struct's field values) -> its bytes``."""

_INT16 = struct.Struct(">h").pack
_INT32 = struct.Struct(">i").pack
_NULL16 = _INT16(-1)
_NULL32 = _INT32(-1)
_COMPACT_NULL = b"\x00"

_original_encode: Callable[[Struct], bytes] | None = None
_writers: dict[types.Schema, StructWriter | None] = {}


def install() -> None:
    """Encode every aiokafka request with compiled writers, from now on, in this process
    (idempotent)."""
    global _original_encode
    if _original_encode is not None:
        return
    _original_encode = Struct.encode
    Struct.encode = encode


def uninstall() -> None:
    """aiokafka's own encoder again (tests)."""
    global _original_encode
    if _original_encode is not None:
        Struct.encode = _original_encode
        _original_encode = None


def original_encode(struct_value: Struct) -> bytes:
    """aiokafka's encoder, whether or not ``install`` ran."""
    return (_original_encode or Struct.encode)(struct_value)


def encode(self: Struct) -> bytes:
    """``Struct.encode`` by the compiled writer of the instance's schema, or aiokafka's encoder
    where it cannot. Writers are kept by schema, not class: aiokafka reads ``self.SCHEMA`` at
    each encode, and an instance or a class may be given another."""
    schema = self.SCHEMA
    writer = _writers[schema] if schema in _writers else _writers.setdefault(schema, schema_writer(schema))
    if writer is not None:
        fields = self.__dict__
        try:
            return writer([fields[name] for name in schema.names])
        except Exception:  # noqa: BLE001 - aiokafka's encoder starts again and raises its own error
            return original_encode(self)
    return original_encode(self)


def struct_writer(cls: type[Struct]) -> StructWriter | None:
    """The compiled writer of ``cls``'s fields, or ``None`` if its schema holds an unknown type."""
    return schema_writer(cls.SCHEMA)


def schema_writer(schema: types.Schema) -> StructWriter | None:
    """The compiled writer of ``schema``'s fields, or ``None`` if it holds an unknown type."""
    try:
        write = _schema_writer(schema)
    except (Unknown, AttributeError, TypeError):
        return None

    def whole(values: Sequence[Any]) -> bytes:
        parts: list[bytes] = []
        write(values, parts)
        return b"".join(parts)

    return whole


def _schema_writer(schema: types.Schema) -> Writer:
    """Consecutive fixed-width fields become one ``pack`` of a slice of the values. Only a tuple
    or a list is written here: aiokafka takes ``len(item)`` and ``item[i]``, which a set, an
    iterator or a dict answer differently from ``*item``, so anything else goes to its encoder."""
    count = len(schema.fields)
    steps: list[tuple[int, int, Callable[..., bytes] | None, Writer | None]] = []
    start, codes = 0, ""
    for i, field in enumerate(schema.fields):
        code = FIXED_CODES.get(field)
        if code is not None:
            if not codes:
                start = i
            codes += code
            continue
        if codes:
            steps.append((start, i, struct.Struct(">" + codes).pack, None))
            codes = ""
        steps.append((i, i + 1, None, _writer(field)))
    if codes:
        steps.append((start, count, struct.Struct(">" + codes).pack, None))

    if len(steps) == 1 and steps[0][2] is not None:
        only = steps[0][2]

        def fixed_only(values: Sequence[Any], parts: list[bytes]) -> None:
            if type(values) is not tuple and type(values) is not list:
                raise TypeError(f"not a tuple or list: {type(values).__name__}")
            # pack checks the count itself (struct.error), as Schema.encode does (ValueError)
            parts.append(only(*values))

        return fixed_only

    def write(values: Sequence[Any], parts: list[bytes]) -> None:
        if type(values) is not tuple and type(values) is not list:
            raise TypeError(f"not a tuple or list: {type(values).__name__}")
        if len(values) != count:
            raise ValueError("item field count does not match the schema")
        for begin, end, pack, writer in steps:
            if pack is not None:
                parts.append(pack(*values[begin:end]))
            else:
                writer(values[begin], parts)  # type: ignore[misc]

    return write


def _writer(field: Any) -> Writer:
    code = FIXED_CODES.get(field)
    if code is not None:
        pack = struct.Struct(">" + code).pack
        return lambda value, parts: parts.append(pack(value))
    if isinstance(field, types.Schema):
        return _schema_writer(field)
    if isinstance(field, types.CompactArray):  # before Array: it is one
        return _array(_writer(field.array_of), _COMPACT_NULL, _compact_length)
    if isinstance(field, types.Array):
        return _array(_writer(field.array_of), _NULL32, _INT32)
    if isinstance(field, types.CompactString):  # before String: it is one
        return _text(field.encoding, _COMPACT_NULL, _compact_length)
    if isinstance(field, types.String):
        return _text(field.encoding, _NULL16, _INT16)
    if field is types.CompactBytes:
        return _blob(_COMPACT_NULL, _compact_length)
    if field is types.Bytes:
        return _blob(_NULL32, _INT32)
    if field is types.UnsignedVarInt32:
        return lambda value, parts: parts.append(_unsigned_varint32(value))
    if field is types.VarInt32:
        return lambda value, parts: parts.append(_varint32(value))
    if field is types.VarInt64 or field is types.TaggedFields:
        own = field.encode
        return lambda value, parts: parts.append(own(value))
    raise Unknown(repr(field))


def _compact_length(length: int) -> bytes:
    return _unsigned_varint32(length + 1)


def _array(item: Writer, null: bytes, length_of: Callable[[int], bytes]) -> Writer:
    def array(values: Sequence[Any] | None, parts: list[bytes]) -> None:
        if values is None:
            parts.append(null)
            return
        parts.append(length_of(len(values)))
        for value in values:
            item(value, parts)

    return array


def _text(encoding: str, null: bytes, length_of: Callable[[int], bytes]) -> Writer:
    def text(value: str | None, parts: list[bytes]) -> None:
        if value is None:
            parts.append(null)
            return
        encoded = str(value).encode(encoding)
        parts.append(length_of(len(encoded)))
        parts.append(encoded)

    return text


def _blob(null: bytes, length_of: Callable[[int], bytes]) -> Writer:
    def blob(value: bytes | None, parts: list[bytes]) -> None:
        if value is None:
            parts.append(null)
            return
        parts.append(length_of(len(value)))
        parts.append(value)  # not bytes-like: the join raises TypeError, as aiokafka's ``+`` does

    return blob


def _unsigned_varint32(value: int) -> bytes:
    value &= 0xFFFFFFFF
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value & 0xFFFFFF80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint32(value: int) -> bytes:
    value &= 0xFFFFFFFF  # aiokafka's arithmetic, to the bit: (value << 1) ^ (value >> 31) of the mask
    return _unsigned_varint32((value << 1) ^ (value >> 31))
