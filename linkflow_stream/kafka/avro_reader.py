"""Avro readers compiled from a schema into plain Python functions: the other half of
``avro_writer``, for the records read most (the views decode every event of every run).

A compiled reader reads bytes written with the *same* schema (the codec uses fastavro, which
resolves one schema against another, for anything written with an older one). It returns what
fastavro returns for those bytes: a dict per record, enum symbols as strings, timestamps as UTC
datetimes, JSON text parsed. A field named ``workflow`` of type ``WorkflowDefinition`` is asked
of the caller's ``known_workflow(data, pos)``: a definition seen before, recognised by its bytes
(the run's snapshot, decoded once per definition, ``Codec.decode``); when it answers ``None``
the reader raises ``UnknownWorkflow`` and the codec decodes the record with fastavro instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from linkflow_stream.core.clock import EPOCH
from linkflow_stream.kafka.avro_writer import Unsupported, names_workflow, register_name

Read = Callable[[bytes, int], tuple[Any, int]]
RecordReader = Callable[[bytes], dict[str, Any]]
KnownWorkflow = Callable[[bytes, int], tuple[Any, int] | None]


class UnknownWorkflow(Exception):
    """The record's workflow is not one seen before: decode it the general way."""


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of at most ten bytes (64 bits); a longer one is refused (``ValueError``:
    the codec then reads the record with fastavro, which says what it makes of it)."""
    byte = data[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise ValueError("a varint longer than 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise ValueError("a string runs past the end of the record")
    return data[pos:end].decode(), end


def read_json(data: bytes, pos: int) -> tuple[Any, int]:
    text, pos = read_string(data, pos)
    return json.loads(text), pos


def read_timestamp_millis(data: bytes, pos: int) -> tuple[Any, int]:
    millis, pos = read_long(data, pos)
    return EPOCH + timedelta(microseconds=millis * 1000), pos


def read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    return data[pos] != 0, pos + 1


def compile_reader(
    schema: dict[str, Any], known_workflow: KnownWorkflow | None = None
) -> RecordReader | None:
    """A function ``bytes -> dict`` for the record ``schema`` (self-contained JSON, as for
    ``avro_writer.compile_record``); ``None`` if any type is not supported."""
    named: dict[str, Any] = {}
    try:
        fields = _fields(schema, named, known_workflow)
    except (Unsupported, RecursionError):
        return None

    def read(data: bytes) -> dict[str, Any]:
        value: dict[str, Any] = {}
        pos = 0
        for name, field_reader in fields:
            value[name], pos = field_reader(data, pos)
        return value

    return read


def _fields(
    schema: dict[str, Any], named: dict[str, Any], known_workflow: KnownWorkflow | None
) -> list[tuple[str, Read]]:
    register_name(schema, named)
    out = []
    for field in schema["fields"]:
        kind = field["type"]
        if known_workflow is not None and field["name"] == "workflow" and names_workflow(kind):
            out.append((field["name"], _workflow_reader(kind, known_workflow)))
        else:
            out.append((field["name"], _reader(kind, named)))
    return out


def _workflow_reader(kind: Any, known_workflow: KnownWorkflow) -> Read:
    nullable = isinstance(kind, list)

    def workflow(data: bytes, pos: int) -> tuple[Any, int]:
        if nullable:
            branch, pos = read_long(data, pos)
            if branch == 0:
                return None, pos
            if branch != 1:
                raise ValueError(f"union branch {branch} of a two-branch union")
        found = known_workflow(data, pos)
        if found is None:
            raise UnknownWorkflow
        return found

    return workflow


def _reader(kind: Any, named: dict[str, Any]) -> Read:
    if isinstance(kind, str):
        if kind in named:
            return _reader(named[kind], named)
        return _primitive(kind)
    if isinstance(kind, list):
        if len(kind) != 2 or kind[0] != "null":
            raise Unsupported(f"union {kind}")
        branch = _reader(kind[1], named)

        def optional(data: bytes, pos: int) -> tuple[Any, int]:
            first = data[pos]  # the branch as writers write it: one byte, 0 (null) or 2 (1)
            if first == 0:
                return None, pos + 1
            if first == 2:
                return branch(data, pos + 1)
            index, pos = read_long(data, pos)  # any longer form of the same numbers
            if index == 0:
                return None, pos
            if index != 1:
                raise ValueError(f"union branch {index} of a two-branch union")
            return branch(data, pos)

        return optional
    logical, base = kind.get("logicalType"), kind["type"]
    if logical == "timestamp-millis" and base == "long":
        return read_timestamp_millis
    if logical == "json" and base == "string":
        return read_json
    if logical is not None:
        raise Unsupported(f"logical type {logical}")
    if base == "enum":
        register_name(kind, named)
        symbols = list(kind["symbols"])

        def enum(data: bytes, pos: int) -> tuple[Any, int]:
            index, pos = read_long(data, pos)
            if not 0 <= index < len(symbols):
                raise ValueError(f"enum index {index} out of range")
            return symbols[index], pos

        return enum
    if base == "record":
        fields = _fields(kind, named, None)

        def record(data: bytes, pos: int) -> tuple[Any, int]:
            value: dict[str, Any] = {}
            for name, field_reader in fields:
                value[name], pos = field_reader(data, pos)
            return value, pos

        return record
    if base == "map":
        values = _reader(kind["values"], named)

        def mapping(data: bytes, pos: int) -> tuple[Any, int]:
            out: dict[str, Any] = {}
            while True:
                count, pos = read_long(data, pos)
                if count == 0:
                    return out, pos
                if count < 0:  # a block with its size in bytes after the count
                    count = -count
                    _size, pos = read_long(data, pos)
                for _ in range(count):
                    key, pos = read_string(data, pos)
                    out[key], pos = values(data, pos)

        return mapping
    if base == "array":
        items = _reader(kind["items"], named)

        def array(data: bytes, pos: int) -> tuple[Any, int]:
            out: list[Any] = []
            while True:
                count, pos = read_long(data, pos)
                if count == 0:
                    return out, pos
                if count < 0:
                    count = -count
                    _size, pos = read_long(data, pos)
                for _ in range(count):
                    item, pos = items(data, pos)
                    out.append(item)

        return array
    if isinstance(base, str):
        return _reader(base, named)
    raise Unsupported(str(base))


def _primitive(name: str) -> Read:
    if name in ("long", "int"):
        return read_long
    if name == "string":
        return read_string
    if name == "boolean":
        return read_boolean
    raise Unsupported(name)
