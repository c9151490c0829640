"""Avro codec for every record on every topic: two framings of one Avro body, plus CloudEvents
headers.

``schemas/*.avsc`` is the contract. By default a value is Avro single-object encoded: ``C3 01``
+ the writer schema's 8-byte CRC-64-AVRO fingerprint (little-endian) + the Avro body, so any
reader can tell which schema wrote it, without asking anyone, and resolve it against its own.
With a schema registry (``LINKFLOW_SCHEMA_REGISTRY_URL``), values written to Kafka use the
Confluent wire format instead, ``00`` + the registry's 4-byte big-endian schema id + the same
body, which tools such as Kafka UI decode (ADR 0025); the ids come from ``SchemaIds``, filled
before any record is encoded or decoded. A codec with a registry reads both framings.
Fields typed ``{"type": "string", "logicalType": "json"}`` carry arbitrary JSON (node configs,
inputs, outputs) as text.
"""

from __future__ import annotations

import functools
import io
import json
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
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

from linkflow_stream.core import strict_json
from linkflow_stream.core.clock import isoformat
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.identity_memo import IdentityMemo
from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.state import ExecutionState, NodeState
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.kafka.avro_reader import (
    RecordReader,
    UnknownWorkflow,
    compile_reader,
    read_long,
    read_string,
)
from linkflow_stream.kafka.avro_writer import RecordWriter, compile_record
from linkflow_stream.kafka.schema_ids import (
    CONFLUENT_HEADER_BYTES,
    SchemaIds,
    confluent_header,
    confluent_id,
)
from linkflow_stream.kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
NAMESPACE = "io.linkflow"
MAGIC = b"\xc3\x01"
CONTENT_TYPE = "application/avro"

T = TypeVar("T", bound=BaseModel)
STATE = f"{NAMESPACE}.ExecutionState"
WORKFLOW = f"{NAMESPACE}.WorkflowDefinition"
CARRIES_WORKFLOW: tuple[type[BaseModel], ...] = (ExecutionState, ExecutionEvent, StartExecution)
"""The records that carry a run's workflow snapshot: a run's definition, the same object in its
request, first event and every state (``Codec.decode`` shares it between runs too), written from
bytes kept per object rather than encoded again in each record (ADR 0039, 0041)."""
COMPILED = frozenset(
    f"{NAMESPACE}.{model}" for model in ("ExecutionEvent", "ExecutionState", "StartExecution", "NodeResult")
)
"""The records written most (per run: its request, every event, its snapshots, each task's
result), written by compiled writers (``avro_writer``); fastavro writes the rest."""
NODE_STATE = f"{NAMESPACE}.NodeState"
NODE_CACHE = 65_536
"""Encoded node states kept, by object, while the object lives: the nodes of the runs in flight (a
200-node run's state is 200 of them; most stay the same objects from one snapshot or read-model
row to the next)."""
NODE_CACHE_BYTES = 32 * 1024 * 1024
"""And at most this many of their bytes."""
NODE_CACHE_LARGEST = 16 * 1024
"""A node state encoding larger than this (a large output) is not kept: encoded each time."""
WORKFLOW_CACHE = 512
"""Encoded workflow snapshots kept, by object, and decoded ones, by id and version: the runs in
flight share a few definitions."""
WORKFLOW_CACHE_BYTES = 64 * 1024 * 1024
"""And at most this many bytes in each of the two (encoded bytes; the decoded copies' JSON text,
which their objects roughly follow): a definition may be up to a megabyte (the API's body
limit), and 512 of those kept twice over would be gigabytes. The newest entry always stays."""
SAME_KEY_COPIES = 4
"""Different definitions kept under one id and version (another deployment's, a test's)."""

LOGICAL_WRITERS["string-json"] = lambda datum, _schema: json.dumps(datum, separators=(",", ":"))
LOGICAL_READERS["string-json"] = lambda datum, _writer, _reader: json.loads(datum)


class DecodeError(LinkflowError):
    """Bytes that are not a record this engine can read; they belong in the dead-letter topic."""

    error_type = "decode"


def decode_json(value: bytes, model: type[T], what: str, prepare: Callable[[Any], Any] | None = None) -> T:
    """A record written as a JSON object with ``model``'s fields (for producers without an Avro
    library), parsed as RFC 8259 JSON (no NaN or Infinity, ADR 0049); ``prepare`` may adjust the
    parsed value first. ``DecodeError`` naming every wrong field otherwise."""
    try:
        data = strict_json.loads(value.removeprefix(b"\xef\xbb\xbf"))  # a BOM some editors write
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"malformed JSON {what}: {exc}") from exc
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number"
        )
        raise DecodeError(f"not a {what}: JSON, but {kind}, not an object with its fields")
    try:
        return model.model_validate(prepare(data) if prepare is not None else data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise DecodeError(f"not a {what}: {problems}") from exc


def looks_like_json(value: bytes) -> bool:
    """Whether a record's value is meant as JSON rather than Avro: Avro's single-object encoding
    starts with 0xC3 0x01 and Confluent's with 0x00, while JSON text starts (after a BOM or
    whitespace) with one of these. A JSON list or string then gets a reason that says so."""
    head = value.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    return head != b"" and head in b'{["-0123456789tfn'


def fingerprint(canonical: str) -> bytes:
    """The Avro CRC-64-AVRO fingerprint of a canonical schema, as the 8 bytes the header carries."""
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


class SchemaSet:
    """The parsed schemas of one directory, by full name and by fingerprint."""

    def __init__(self, directory: Path) -> None:
        self.by_name: dict[str, Any] = {}
        self.by_fingerprint: dict[bytes, Any] = {}
        self.fingerprints: dict[str, bytes] = {}
        self.texts: dict[str, str] = {}
        """Each schema as self-contained JSON (named types it uses inlined): what a registry gets."""
        for path in sorted(directory.glob("*.avsc")):
            loaded = load_schema(str(path), _write_hint=False)
            name = path.name.removesuffix(".avsc")
            self.texts[name] = json.dumps(loaded, separators=(",", ":"))
            # Parsed once here: fastavro re-parses an unparsed schema on every call (~30 us).
            parsed = parse_schema(loaded)
            self.by_name[name] = parsed
            self.fingerprints[name] = fingerprint(to_parsing_canonical_form(loaded))
            self.by_fingerprint[self.fingerprints[name]] = parsed

    def schema(self, name: str) -> Any:
        return self.by_name[name if "." in name else f"{NAMESPACE}.{name}"]


class Codec:
    """Encodes pydantic records with the current schemas; decodes any known writer schema.

    With ``registry``, ``encode`` with a topic writes the Confluent wire format and ``decode``
    reads it too; ``learn`` must have seen a batch's values before they are decoded."""

    def __init__(
        self,
        current: SchemaSet,
        older: Iterable[SchemaSet] = (),
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.current = current
        self.older = tuple(older)
        self.writers = dict(current.by_fingerprint)
        for s in self.older:
            for fp, parsed in s.by_fingerprint.items():
                self.writers.setdefault(fp, parsed)
        self._fingerprints = current.fingerprints
        self._workflows: OrderedDict[int, tuple[WorkflowDefinition, bytes]] = OrderedDict()
        self._workflow_bytes_kept = 0
        self._writers: dict[str, RecordWriter | None] = {}
        """Compiled writers by record name (``None``: fastavro writes that record)."""
        self._readers: dict[str, RecordReader | None] = {}
        """Compiled readers by record name (``None``: fastavro reads that record)."""
        self._node_bytes = IdentityMemo(
            self._encode_node,
            limit=NODE_CACHE,
            weigh=len,
            weight_limit=NODE_CACHE_BYTES,
            keep=lambda _node, encoded: len(encoded) <= NODE_CACHE_LARGEST,
        )
        """A node state's bytes, kept per object while it lives (see ``compile_record``'s
        ``object_maps``; ADR 0070)."""
        self._decoded_workflows: OrderedDict[tuple[Any, Any], list[tuple[str, WorkflowDefinition]]] = (
            OrderedDict()
        )
        """Decoded definitions by (id, version): each copy's fields as JSON text, and its object."""
        self._decoded_text_kept = 0
        """The JSON text of every copy in ``_decoded_workflows``, in characters."""
        self.ids = SchemaIds(registry, self.parse_writer) if registry is not None else None
        """``None``: single-object encoding only, and a Confluent-framed value is a DecodeError."""

    def with_registry(self, registry: SchemaRegistryClient) -> Codec:
        """The same schemas, writing and reading the Confluent wire format through ``registry``."""
        return Codec(self.current, self.older, registry)

    def parse_writer(self, text: str) -> Any:
        """A registry's schema text as a writer schema: the parsed schema this codec has for the
        same fingerprint (so the current schema reads without resolution), else a new parse."""
        loaded = json.loads(text)
        known = self.writers.get(fingerprint(to_parsing_canonical_form(loaded)))
        return known if known is not None else parse_schema(loaded)

    async def register(self, topics: Mapping[str, str]) -> None:
        """Register the value schema of every topic (real name -> schema full name) with the
        registry and take the ids (``SchemaIds.register``). A codec without a registry refuses."""
        if self.ids is None:
            raise SchemaRegistryError("this codec has no schema registry (LINKFLOW_SCHEMA_REGISTRY_URL)")
        await self.ids.register(topics, self.current.texts)

    async def close(self) -> None:
        """Close the registry client's connections, if any."""
        if self.ids is not None and self.ids.client is not None:
            await self.ids.client.close()

    @property
    def learner(self) -> Callable[[Iterable[bytes | None]], Awaitable[None]] | None:
        """``learn`` when there is anything to learn (a registry), else ``None``: a consumer loop
        given ``None`` skips the call and the list of values it would build for it."""
        return self.learn if self.ids is not None else None

    async def learn(self, values: Iterable[bytes | None]) -> None:
        """Make every Confluent schema id in ``values`` known before they are decoded (see
        ``SchemaIds.learn``). Without a registry: nothing to do, nothing awaited."""
        if self.ids is not None:
            await self.ids.learn(values)

    def encode(self, record: BaseModel, topic: str | None = None) -> bytes:
        """``record``'s bytes; for Kafka ``topic`` (the real name) in the Confluent wire format when
        a registry gave an id for it, else (and always without a topic) single-object encoded."""
        name = f"{NAMESPACE}.{type(record).__name__}"
        writer = self._writers[name] if self.compiled(name) else None
        if writer is None:
            return self.encode_dict(name, record.model_dump(), topic)
        carries = type(record) in CARRIES_WORKFLOW  # its workflow: written from the bytes kept per object
        if isinstance(record, ExecutionState):  # and its node states too
            data = record.model_dump(exclude={"workflow", "nodes"})
            data["nodes"] = record.nodes
        else:
            data = record.model_dump(exclude={"workflow"}) if carries else record.model_dump()
        return self._header(name, topic).getvalue() + writer(data, getattr(record, "workflow", None))

    def compiled(self, name: str) -> bool:
        """Whether a compiled writer (``avro_writer``) writes ``name`` rather than fastavro."""
        if name not in self._writers:
            self._writers[name] = self._compile(name)
        return self._writers[name] is not None

    def _compile(self, name: str) -> RecordWriter | None:
        text = self.current.texts.get(name)
        if name not in COMPILED or text is None:
            return None
        if name == STATE:
            if self._node_writer is None:
                return None
            return compile_record(json.loads(text), self._workflow_bytes, {"nodes": self._node_bytes})
        return compile_record(json.loads(text), self._workflow_bytes)

    def _reader(self, name: str) -> RecordReader | None:
        if name not in self._readers:
            text = self.current.texts.get(name) if name in COMPILED else None
            self._readers[name] = (
                None if text is None else compile_reader(json.loads(text), self._known_workflow)
            )
        return self._readers[name]

    @functools.cached_property
    def _node_writer(self) -> RecordWriter | None:
        text = self.current.texts.get(NODE_STATE)
        return None if text is None else compile_record(json.loads(text))

    def _encode_node(self, node: NodeState) -> bytes:
        writer = self._node_writer
        assert writer is not None  # a state writer is compiled only with a node writer
        return writer(node.model_dump(), None)

    def _workflow_bytes(self, workflow: WorkflowDefinition) -> bytes:
        cached = self._workflows.get(id(workflow))
        if cached is not None and cached[0] is workflow:
            self._workflows.move_to_end(id(workflow))
            return cached[1]
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.current.by_name[WORKFLOW], workflow.model_dump())
        encoded = buf.getvalue()
        self._workflows[id(workflow)] = (workflow, encoded)  # holds it: its id stays its own
        self._workflow_bytes_kept += len(encoded)
        while len(self._workflows) > 1 and (
            len(self._workflows) > WORKFLOW_CACHE or self._workflow_bytes_kept > WORKFLOW_CACHE_BYTES
        ):
            _old, (_workflow, dropped) = self._workflows.popitem(last=False)
            self._workflow_bytes_kept -= len(dropped)
        return encoded

    def _shared_workflow(self, raw: dict[str, Any]) -> WorkflowDefinition:
        """One object for every decoded copy of the same definition: the runs of a workflow
        version carry the same snapshot, so it is validated once, not in every request, event and
        state, and its bytes and node index (both kept per object) are reused. Shared only when
        the decoded fields are the same, types included (their JSON text: a dict comparison
        takes ``true`` for ``1`` and ``0`` for ``-0.0``), never by id and version alone."""
        key = (raw.get("id"), raw.get("version"))
        text = json.dumps(raw, default=repr)
        copies = self._decoded_workflows.get(key)
        if copies is None:
            copies = self._decoded_workflows[key] = []
        else:
            self._decoded_workflows.move_to_end(key)
        for kept, workflow in copies:
            if kept == text:
                return workflow
        workflow = WorkflowDefinition.model_validate(raw)
        copies.insert(0, (text, workflow))
        self._decoded_text_kept += len(text) - sum(len(t) for t, _w in copies[SAME_KEY_COPIES:])
        del copies[SAME_KEY_COPIES:]
        while len(self._decoded_workflows) > 1 and (
            len(self._decoded_workflows) > WORKFLOW_CACHE or self._decoded_text_kept > WORKFLOW_CACHE_BYTES
        ):
            _key, dropped = self._decoded_workflows.popitem(last=False)
            self._decoded_text_kept -= sum(len(t) for t, _w in dropped)
        return workflow

    def _header(self, name: str, topic: str | None) -> io.BytesIO:
        buf = io.BytesIO()
        schema_id = self.ids.id_for(topic, name) if self.ids is not None and topic is not None else None
        if schema_id is not None:
            buf.write(confluent_header(schema_id))
        else:
            buf.write(MAGIC)
            buf.write(self._fingerprints[name])
        return buf

    def encode_dict(self, name: str, data: dict[str, Any], topic: str | None = None) -> bytes:
        buf = self._header(name, topic)
        fastavro.schemaless_writer(buf, self.current.by_name[name], data)
        return buf.getvalue()

    def decode(self, data: bytes | None, model: type[T]) -> T:
        """Decode ``data`` into ``model``; raises ``DecodeError`` for anything unreadable."""
        name = f"{NAMESPACE}.{model.__name__}"
        try:
            value = self._read_compiled(data, name)
            if value is None:
                value = self.decode_dict(data, name)
                if model in CARRIES_WORKFLOW and isinstance(raw := value.get("workflow"), dict):
                    value["workflow"] = self._shared_workflow(raw)
            return model.model_validate(value)
        except pydantic.ValidationError as exc:
            raise DecodeError(f"{name} does not fit its model: {exc}") from exc

    def _read_compiled(self, data: bytes | None, name: str) -> dict[str, Any] | None:
        """The record read by its compiled reader (``avro_reader``), its workflow the shared object
        of a definition seen before; ``None`` when fastavro must read it: another record type, a
        value written with another schema, a workflow not seen yet, or bytes the compiled reader
        cannot read (fastavro then says what is wrong with them)."""
        compiled = self._reader(name)
        if compiled is None or data is None:
            return None
        try:
            writer, body = self._writer_and_body(data, name)
        except DecodeError:
            return None
        if writer is not self.current.by_name[name]:
            return None
        try:
            return compiled(body)
        except (UnknownWorkflow, IndexError, KeyError, ValueError, TypeError, OverflowError, RecursionError):
            return None

    def _known_workflow(self, data: bytes, pos: int) -> tuple[WorkflowDefinition, int] | None:
        """The shared definition whose bytes ``data`` holds at ``pos``, and where they end. Avro
        bytes are self-delimiting: bytes that begin with a definition's whole encoding decode to
        that definition and end where it ends, so a prefix match is a decode. Its id and version
        (its first two fields) pick the candidates."""
        workflow_id, after = read_string(data, pos)
        version, _ = read_long(data, after)
        key = (workflow_id, version)
        for _text, workflow in self._decoded_workflows.get(key, ()):
            encoded = self._workflow_bytes(workflow)
            if data.startswith(encoded, pos):
                self._decoded_workflows.move_to_end(key)
                return workflow, pos + len(encoded)
        return None

    def decode_dict(self, data: bytes | None, name: str) -> dict[str, Any]:
        writer, body = self._writer_and_body(data, name)
        reader = self.current.by_name[name]
        try:
            value = fastavro.schemaless_reader(io.BytesIO(body), writer, None if writer is reader else reader)
        except Exception as exc:
            raise DecodeError(f"cannot decode {name}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError(f"{name} did not decode to a record")
        return value

    def _writer_and_body(self, data: bytes | None, name: str) -> tuple[Any, bytes]:
        """The writer schema named by ``data``'s framing, and the Avro body after it."""
        if data is not None and (schema_id := confluent_id(data)) is not None:
            writer, body = self._registered_writer(schema_id, name), data[CONFLUENT_HEADER_BYTES:]
        elif data is None or len(data) < 10 or data[:2] != MAGIC:
            raise DecodeError(f"not an Avro single-object encoded {name}")
        else:
            writer, body = self.writers.get(data[2:10]), data[10:]
            if writer is None:
                raise DecodeError(f"unknown writer schema fingerprint {data[2:10].hex()} for {name}")
        return writer, body

    def _registered_writer(self, schema_id: int, name: str) -> Any:
        """The writer schema of a Confluent-framed value, from what the registry said before."""
        if self.ids is None:
            raise DecodeError(
                f"{name} is in the Confluent wire format (schema id {schema_id}) but no schema "
                "registry is configured (LINKFLOW_SCHEMA_REGISTRY_URL)"
            )
        writer = self.ids.writers.get(schema_id)
        if writer is None:
            known = "is not known to" if schema_id in self.ids.absent else "was not fetched from"
            raise DecodeError(f"schema id {schema_id} of {name} {known} the schema registry")
        return writer


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
        # a record's own time is shared by a step's records (kept); now would only crowd the cache
        ("ce_time", (isoformat(time) if time else datetime.now(UTC).isoformat()).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    headers.extend(extra)
    return headers
