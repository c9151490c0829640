"""What the compiled Kafka readers (ADR 0067) and writers (ADR 0069) share about aiokafka's
protocol types: which are fixed-width, with their ``struct`` codes (consecutive ones are read or
written by one ``struct`` call), and the error for a type neither compiles."""

from __future__ import annotations

from typing import Any

from aiokafka.protocol import types

FIXED_CODES: dict[Any, str] = {
    types.Int8: "b",
    types.Int16: "h",
    types.Int32: "i",
    types.UInt32: "I",
    types.Int64: "q",
    types.Float64: "d",
    types.Boolean: "?",
}
"""Fixed-width field types and their big-endian ``struct`` codes."""


class Unknown(Exception):
    """A schema type the compiled readers and writers do not know: its class keeps aiokafka's."""
