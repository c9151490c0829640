"""Avro writers compiled from a schema into plain Python functions, for the records written most.

fastavro's writer interprets the schema at every call: each field costs about 0.7 us however
little it holds (its type looked up, a union's branches tried one by one), so an event with one
node id and nineteen empty optional fields took 20-25 us to write, and a run of a five-node
diamond writes thirteen of them (bench.profile: a tenth of the orchestrator's CPU). A compiled
writer walks the schema once and keeps one small function per field: an empty optional field is
one byte appended.

Only the types those records use are compiled (string, int, long, boolean, timestamp-millis,
JSON text, enum, map, array, record, and unions of ``null`` with one of them); a schema with
anything else compiles to ``None`` and the codec keeps fastavro for it. The bytes are the Avro
binary encoding fastavro writes for the same data (``tests/unit/test_compiled_avro.py`` checks
generated records against it); a field named ``workflow`` of type ``WorkflowDefinition`` is
written by the caller's ``workflow_bytes`` (its cached snapshot, ``codec.CARRIES_WORKFLOW``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from linkflow_stream.core.clock import EPOCH, MILLISECOND

Write = Callable[[bytearray, Any], None]
RecordWriter = Callable[[dict[str, Any], Any], bytes]
"""``(fields, workflow) -> bytes``: a record's ``model_dump`` (without its workflow) and its workflow."""
WORKFLOW_NAMES = ("io.linkflow.WorkflowDefinition", "WorkflowDefinition")


LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def write_long(out: bytearray, n: int) -> None:
    """Zig-zag, then base-128 varint (Avro ``int`` and ``long``); a number outside 64 bits is
    refused, as fastavro refuses it (the zig-zag below would turn it into another number)."""
    if not LONG_MIN <= n <= LONG_MAX:
        raise ValueError(f"{n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def write_string(out: bytearray, text: str) -> None:
    data = text.encode()
    write_long(out, len(data))
    out += data


def write_json(out: bytearray, value: Any) -> None:
    """The ``{"type": "string", "logicalType": "json"}`` text, as the codec's fastavro hook writes it."""
    write_string(out, json.dumps(value, separators=(",", ":")))


def write_timestamp_millis(out: bytearray, value: datetime | int) -> None:
    write_long(out, value if isinstance(value, int) else (value - EPOCH) // MILLISECOND)


def write_boolean(out: bytearray, value: bool) -> None:
    out.append(1 if value else 0)


class Unsupported(Exception):
    """A schema type this module does not compile."""


def compile_record(
    schema: dict[str, Any],
    workflow_bytes: Callable[[Any], bytes] | None = None,
    object_maps: dict[str, Callable[[Any], bytes]] | None = None,
) -> RecordWriter | None:
    """A function ``(fields, workflow) -> bytes`` for the record ``schema`` (self-contained JSON:
    a named type defined where it first appears, referenced by name after), where ``fields`` is
    the record's ``model_dump`` without its workflow; ``None`` if any type is not supported.

    ``object_maps`` names top-level map fields whose values ``fields`` holds as objects, not
    dumped, with the function that gives a value's bytes: a run's node states, which stay the
    same objects from one state to the next (only a node that moved is a new object), so their
    bytes can be kept per object (``Codec``) and a state is not written again node by node."""
    named: dict[str, Any] = {}
    try:
        fields = _fields(schema, named, workflow_bytes, top=True)
    except (Unsupported, RecursionError):  # a recursive type: not compiled either
        return None
    for i, (name, _writer_of_field, default, is_workflow) in enumerate(fields):
        if object_maps and name in object_maps:
            fields[i] = (name, _map_writer(_bytes_of(object_maps[name])), default, is_workflow)

    def write(data: dict[str, Any], workflow: Any) -> bytes:
        out = bytearray()
        for name, field_writer, default, is_workflow in fields:
            field_writer(out, workflow if is_workflow else data.get(name, default))
        return bytes(out)

    return write


def _fields(
    schema: dict[str, Any], named: dict[str, Any], workflow_bytes: Callable[[Any], bytes] | None, *, top: bool
) -> list[tuple[str, Write, Any, bool]]:
    """Each field's name, writer, default (what fastavro writes for a missing key) and whether
    it is the spliced workflow."""
    register_name(schema, named)
    out = []
    for field in schema["fields"]:
        kind = field["type"]
        if top and field["name"] == "workflow" and workflow_bytes is not None and names_workflow(kind):
            out.append((field["name"], _workflow_writer(kind, workflow_bytes), None, True))
            continue
        out.append((field["name"], _writer(kind, named), field.get("default"), False))
    return out


def register_name(schema: dict[str, Any], named: dict[str, Any]) -> None:
    """A named type (record, enum) under its name, its short name and its namespaced name, so a
    later reference by any of them finds it (the compiled readers use it too)."""
    name = schema["name"]
    named[name] = schema
    named[name.rsplit(".", 1)[-1]] = schema
    if schema.get("namespace"):
        named[f"{schema['namespace']}.{name}"] = schema


def names_workflow(kind: Any) -> bool:
    """Whether a field's type is ``WorkflowDefinition`` or ``["null", WorkflowDefinition]``."""
    if isinstance(kind, list):
        return len(kind) == 2 and kind[0] == "null" and names_workflow(kind[1])
    return (kind.get("name") if isinstance(kind, dict) else kind) in WORKFLOW_NAMES


def _bytes_of(value_bytes: Callable[[Any], bytes]) -> Write:
    def write(out: bytearray, value: Any) -> None:
        out += value_bytes(value)

    return write


def _map_writer(values: Write) -> Write:
    """Avro's map: one block of its entries (count, then key and value each), then 0."""

    def mapping(out: bytearray, value: Any) -> None:
        if value:
            write_long(out, len(value))
            for key, item in value.items():
                write_string(out, key)
                values(out, item)
        out.append(0)

    return mapping


def _workflow_writer(kind: Any, workflow_bytes: Callable[[Any], bytes]) -> Write:
    if isinstance(kind, list):

        def nullable(out: bytearray, workflow: Any) -> None:
            if workflow is None:
                out.append(0)
            else:
                out.append(2)  # branch 1, zig-zag
                out += workflow_bytes(workflow)

        return nullable

    def required(out: bytearray, workflow: Any) -> None:
        out += workflow_bytes(workflow)

    return required


def _writer(kind: Any, named: dict[str, Any]) -> Write:
    if isinstance(kind, str):
        if kind in named:
            return _writer(named[kind], named)
        return _primitive(kind)
    if isinstance(kind, list):
        if len(kind) != 2 or kind[0] != "null":
            raise Unsupported(f"union {kind}")
        branch = _writer(kind[1], named)

        def optional(out: bytearray, value: Any) -> None:
            if value is None:
                out.append(0)
            else:
                out.append(2)
                branch(out, value)

        return optional
    logical, base = kind.get("logicalType"), kind["type"]
    if logical == "timestamp-millis" and base == "long":
        return write_timestamp_millis
    if logical == "json" and base == "string":
        return write_json
    if logical is not None:
        raise Unsupported(f"logical type {logical}")
    if base == "enum":
        register_name(kind, named)
        index = {symbol: i for i, symbol in enumerate(kind["symbols"])}

        def enum(out: bytearray, value: Any) -> None:
            write_long(out, index[value])

        return enum
    if base == "record":
        fields = _fields(kind, named, None, top=False)

        def record(out: bytearray, value: Any) -> None:
            for name, field_writer, default, _ in fields:
                field_writer(out, value.get(name, default))

        return record
    if base == "map":
        return _map_writer(_writer(kind["values"], named))
    if base == "array":
        items = _writer(kind["items"], named)

        def array(out: bytearray, value: Any) -> None:
            if value:
                write_long(out, len(value))
                for item in value:
                    items(out, item)
            out.append(0)

        return array
    if isinstance(base, str):
        return _writer(base, named)
    raise Unsupported(str(base))


def _primitive(name: str) -> Write:
    if name in ("long", "int"):
        return write_long
    if name == "string":
        return write_string
    if name == "boolean":
        return write_boolean
    raise Unsupported(name)
