"""Compiled Kafka response readers (ADR 0067) against aiokafka's own decoder, class by class.

Every protocol struct aiokafka defines (requests, responses and headers of every version) gets
values drawn from its schema; their encoding is decoded by the compiled reader and by aiokafka's
decoder, whole, from the middle of a buffer (as a response body after its header), and cut
short. The two must give equal objects and leave the buffer at the same place, or both fail.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

import pytest
from aiokafka.protocol.struct import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.kafka import protocol_decoders
from linkflow_stream.kafka.protocol_decoders import decode, original_decode, struct_reader
from tests.unit.aiokafka_structs import STRUCTS, struct_id, values


def _decoded(cls: type[Struct], data: io.BytesIO | bytes, decode: Any) -> tuple[str, Any, int | None]:
    try:
        out = decode(cls, data)
    except Exception as exc:  # noqa: BLE001 - both decoders must fail alike
        return "error", type(exc).__name__, None
    return "value", out.__dict__, data.tell() if isinstance(data, io.BytesIO) else None


def test_every_struct_gets_a_compiled_reader() -> None:
    assert len(STRUCTS) > 150, len(STRUCTS)
    missing = [cls.__qualname__ for cls in STRUCTS if struct_reader(cls) is None]
    assert not missing, missing


@pytest.mark.parametrize("cls", STRUCTS, ids=struct_id)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_the_compiled_reader_decodes_as_aiokafka(cls: type[Struct], data: st.DataObject) -> None:
    drawn = data.draw(st.tuples(*(values(f) for f in cls.SCHEMA.fields)))
    encoded = cls.SCHEMA.encode(drawn)
    prefix = data.draw(st.binary(max_size=5))
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)))
    for start, sample in ((0, encoded), (len(prefix), prefix + encoded), (0, encoded[:cut])):
        compiled_io, original_io = io.BytesIO(sample), io.BytesIO(sample)
        compiled_io.seek(start)
        original_io.seek(start)
        expected = _decoded(cls, original_io, original_decode)
        assert _decoded(cls, compiled_io, decode) == expected, sample
        if start == 0:
            assert _decoded(cls, sample, decode)[:2] == expected[:2], sample


@pytest.mark.parametrize(
    "raw",
    [
        b"\0\0\0\x07\x01\x00\x0aab",  # one tagged field of 10 bytes, 2 there
        b"\0\0\0\x07\x02\x00\x01a\x03\x01b",  # two, in order
        b"\0\0\0\x07\x02\x03\x01a\x01\x01b",  # out of order: aiokafka's error
        b"\0\0\0\x07\x01\xff\xff\xff\xff\xff\x01",  # a varint too long
        b"\0\0\0\x07\x01",  # cut short
    ],
)
def test_tagged_fields_read_as_aiokafka_reads_them(raw: bytes) -> None:
    """aiokafka writes no tagged fields of its own, so the drawn values above never hold any."""
    header = importlib.import_module("aiokafka.protocol.api").ResponseHeader_v1
    assert _decoded(header, io.BytesIO(raw), decode) == _decoded(header, io.BytesIO(raw), original_decode)


def test_install_replaces_the_decoder_once_and_uninstall_restores_it() -> None:
    before = Struct.decode.__func__
    protocol_decoders.install()
    patched = Struct.decode.__func__
    protocol_decoders.install()
    assert Struct.decode.__func__ is patched is not before
    protocol_decoders.uninstall()
    assert Struct.decode.__func__ is before
