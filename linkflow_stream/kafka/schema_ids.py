"""Schema ids from a schema registry, held in memory so that encoding and decoding never wait on
the registry (ADR 0025).

Records in the Confluent wire format carry a registry's schema id instead of the schema's
fingerprint. Encoding and decoding run inside synchronous hot loops, so the ids must be known
before a record is touched:

- at start (``register``), every topic's value schema is registered under the topic-name
  strategy's subject ``<topic>-value`` (the real, prefixed topic name), which gives the ids to
  write; and every version those subjects hold is fetched, which gives the ids other writers
  (older engines) used;
- an id seen later that is not known yet (a newer engine registered it since) is fetched by
  ``learn``, which every consumer loop awaits on each fetched batch *before* it decodes it. When
  the registry cannot answer, ``learn`` raises a retryable ``SchemaRegistryError`` and the loop
  holds the batch and tries again: a record is never skipped or dead-lettered because the
  registry was away. An id the registry answers it does not know is remembered as absent, and
  decoding a record that carries it is a ``DecodeError`` (a dead letter, like any unreadable
  record).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from linkflow_stream.kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError

log = logging.getLogger(__name__)

CONFLUENT_MAGIC = 0
"""The first byte of a value in the Confluent wire format; a 4-byte big-endian id follows."""
CONFLUENT_HEADER_BYTES = 5


def value_subject(topic: str) -> str:
    """The topic-name strategy's subject for values of ``topic`` (the real, prefixed name)."""
    return f"{topic}-value"


def confluent_header(schema_id: int) -> bytes:
    return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")


def confluent_id(value: bytes | None) -> int | None:
    """The schema id of a value in the Confluent wire format; ``None`` for any other value."""
    if value is None or len(value) < CONFLUENT_HEADER_BYTES or value[0] != CONFLUENT_MAGIC:
        return None
    return int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")


class SchemaIds:
    """What the registry said: the id to write per subject (and per schema name, for a topic
    registered after start), and the parsed writer schema of every id seen.

    ``parse`` turns a registry's schema text into a writer schema; the codec hands back its own
    parsed schema when the text has the fingerprint of one it knows, so a record written with
    the current schema decodes without schema resolution.
    """

    def __init__(self, client: SchemaRegistryClient | None, parse: Callable[[str], Any]) -> None:
        self.client = client
        self._parse = parse
        self.by_subject: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        self.writers: dict[int, Any] = {}
        self.absent: set[int] = set()
        """Ids the registry answered it does not know: their records are dead letters."""

    def remember(self, schema_id: int, text: str) -> None:
        """Keep the writer schema of ``schema_id``; raises what parsing a bad schema raises."""
        if schema_id not in self.writers:
            self.writers[schema_id] = self._parse(text)

    def id_for(self, topic: str, name: str) -> int | None:
        """The id to write a ``name`` record to ``topic`` with: the subject's, else the one the
        schema has under another subject (a pool topic created after start: the record still
        carries an id that resolves to its schema), else ``None`` (not registered at all)."""
        found = self.by_subject.get(value_subject(topic))
        return found if found is not None else self.by_name.get(name)

    def unknown(self, values: Iterable[bytes | None]) -> set[int]:
        """The ids ``values`` carry that are neither known nor known to be absent."""
        out: set[int] = set()
        for value in values:
            schema_id = confluent_id(value)
            if schema_id is not None and schema_id not in self.writers and schema_id not in self.absent:
                out.add(schema_id)
        return out

    async def learn(self, values: Iterable[bytes | None]) -> None:
        """Fetch the schema of every id in ``values`` not known yet. Raises a retryable
        ``SchemaRegistryError`` when the registry cannot answer; the caller holds its records
        and calls again. Without a client this does nothing (decoding then says why)."""
        missing = self.unknown(values)
        if not missing or self.client is None:
            return
        client = self.client
        texts = await asyncio.gather(*(client.schema(i) for i in sorted(missing)))
        for schema_id, text in zip(sorted(missing), texts, strict=True):
            if text is None:
                log.error("schema id %d is not known to the schema registry %s", schema_id, client.url)
                self.absent.add(schema_id)
                continue
            try:
                self.remember(schema_id, text)
            except Exception:  # a schema this codec cannot use is as good as absent
                log.exception("schema id %d from %s cannot be parsed", schema_id, client.url)
                self.absent.add(schema_id)
            else:
                log.info("schema id %d fetched from the schema registry", schema_id)

    async def register(self, topics: Mapping[str, str], schemas: Mapping[str, str]) -> None:
        """Register each topic's value schema under ``<topic>-value`` and fetch every version of
        those subjects. ``topics`` maps real topic names to schema full names, ``schemas`` full
        names to their schema text (self-contained JSON)."""
        if self.client is None:
            raise SchemaRegistryError("no schema registry to register with")
        client = self.client

        async def one(topic: str, name: str) -> None:
            subject = value_subject(topic)
            schema_id = await client.register(subject, schemas[name])
            self.by_subject[subject] = schema_id
            self.by_name[name] = schema_id
            self.remember(schema_id, schemas[name])
            for version in await client.versions(subject):
                found = await client.version(subject, version)
                try:
                    self.remember(found.id, found.schema)
                except Exception:
                    log.exception("%s version %d (id %d) cannot be parsed", subject, version, found.id)
                    self.absent.add(found.id)

        await asyncio.gather(*(one(topic, name) for topic, name in sorted(topics.items())))
