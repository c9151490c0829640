"""Avro codec for every record on every topic: single-object encoding plus CloudEvents headers.

``schemas/*.avsc`` is the contract. A value is ``C3 01`` + the writer schema's 8-byte
CRC-64-AVRO fingerprint (little-endian) + the Avro body, so any reader can tell which schema
wrote it and resolve it against its own. Fields typed ``{"type": "string", "logicalType":
"json"}`` carry arbitrary JSON (node configs, inputs, outputs) as text.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import pydantic
from fastavro.read import LOGICAL_READERS
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form
from fastavro.write import LOGICAL_WRITERS
from pydantic import BaseModel

from linkflow_stream.core.errors import LinkflowError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
NAMESPACE = "io.linkflow"
MAGIC = b"\xc3\x01"
CONTENT_TYPE = "application/avro"

T = TypeVar("T", bound=BaseModel)

LOGICAL_WRITERS["string-json"] = lambda datum, _schema: json.dumps(datum, separators=(",", ":"))
LOGICAL_READERS["string-json"] = lambda datum, _writer, _reader: json.loads(datum)


class DecodeError(LinkflowError):
    """Bytes that are not a record this engine can read; they belong in the dead-letter topic."""

    error_type = "decode"


def fingerprint(canonical: str) -> bytes:
    """The Avro CRC-64-AVRO fingerprint of a canonical schema, as the 8 bytes the header carries."""
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


class SchemaSet:
    """The parsed schemas of one directory, by full name and by fingerprint."""

    def __init__(self, directory: Path) -> None:
        self.by_name: dict[str, Any] = {}
        self.by_fingerprint: dict[bytes, Any] = {}
        self.fingerprints: dict[str, bytes] = {}
        for path in sorted(directory.glob("*.avsc")):
            loaded = load_schema(str(path), _write_hint=False)
            name = path.name.removesuffix(".avsc")
            # Parsed once here: fastavro re-parses an unparsed schema on every call (~30 us).
            parsed = parse_schema(loaded)
            self.by_name[name] = parsed
            self.fingerprints[name] = fingerprint(to_parsing_canonical_form(loaded))
            self.by_fingerprint[self.fingerprints[name]] = parsed

    def schema(self, name: str) -> Any:
        return self.by_name[name if "." in name else f"{NAMESPACE}.{name}"]


class Codec:
    """Encodes pydantic records with the current schemas; decodes any known writer schema."""

    def __init__(self, current: SchemaSet, older: Iterable[SchemaSet] = ()) -> None:
        self.current = current
        self.writers = dict(current.by_fingerprint)
        for s in older:
            for fp, parsed in s.by_fingerprint.items():
                self.writers.setdefault(fp, parsed)
        self._fingerprints = current.fingerprints

    def encode(self, record: BaseModel) -> bytes:
        name = f"{NAMESPACE}.{type(record).__name__}"
        return self.encode_dict(name, record.model_dump())

    def encode_dict(self, name: str, data: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(self._fingerprints[name])
        fastavro.schemaless_writer(buf, self.current.by_name[name], data)
        return buf.getvalue()

    def decode(self, data: bytes | None, model: type[T]) -> T:
        """Decode ``data`` into ``model``; raises ``DecodeError`` for anything unreadable."""
        name = f"{NAMESPACE}.{model.__name__}"
        try:
            return model.model_validate(self.decode_dict(data, name))
        except pydantic.ValidationError as exc:
            raise DecodeError(f"{name} does not fit its model: {exc}") from exc

    def decode_dict(self, data: bytes | None, name: str) -> dict[str, Any]:
        if data is None or len(data) < 10 or data[:2] != MAGIC:
            raise DecodeError(f"not an Avro single-object encoded {name}")
        writer = self.writers.get(data[2:10])
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {data[2:10].hex()} for {name}")
        reader = self.current.by_name[name]
        try:
            value = fastavro.schemaless_reader(
                io.BytesIO(data[10:]), writer, None if writer is reader else reader
            )
        except Exception as exc:
            raise DecodeError(f"cannot decode {name}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError(f"{name} did not decode to a record")
        return value


@cache
def default_codec() -> Codec:
    """The codec over ``schemas/`` plus every released schema set under ``schemas/released/``."""
    released = SCHEMA_DIR / "released"
    older = [SchemaSet(d) for d in sorted(released.iterdir()) if d.is_dir()] if released.exists() else []
    return Codec(SchemaSet(SCHEMA_DIR), older)


def cloudevent_headers(
    ce_type: str,
    source: str,
    subject: str,
    *,
    ce_id: str | None = None,
    time: datetime | None = None,
    extra: Iterable[tuple[str, bytes]] = (),
) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka binding, binary mode: the record value is the event data."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", (ce_id or str(uuid.uuid4())).encode()),
        ("ce_type", ce_type.encode()),
        ("ce_source", source.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", (time or datetime.now(UTC)).isoformat().encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    headers.extend(extra)
    return headers
