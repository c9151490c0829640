"""A client of a schema registry's Confluent-compatible REST API: the few calls the codec needs.

Confluent Schema Registry serves this API at its root; Apicurio Registry serves the same at
``/apis/ccompat/v7``. ``LINKFLOW_SCHEMA_REGISTRY_URL`` is that base URL either way. Only four
calls are made, all documented by Confluent's API reference:

- ``POST /subjects/{subject}/versions`` ``{"schema", "schemaType": "AVRO"}`` registers a schema
  (or finds it registered already) and answers its id;
- ``GET /subjects/{subject}/versions`` and ``GET /subjects/{subject}/versions/{version}`` list
  what a subject holds, so a reader knows every id written under it before it reads;
- ``GET /schemas/ids/{id}`` gives the schema of an id a record carries.

An answer the registry could not give (no connection, a timeout, a 5xx) is a retryable
``SchemaRegistryError``; a 4xx is not (an incompatible or invalid schema, a bad URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from linkflow_stream.core.errors import LinkflowError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
TIMEOUT_SECONDS = 10.0
"""One call's limit: the registry answers from memory or a small database, in milliseconds."""


class SchemaRegistryError(LinkflowError):
    """The schema registry did not answer, or refused what was asked."""

    error_type = "schema_registry"


@dataclass(frozen=True)
class SubjectVersion:
    """One version of a subject: the id records carry and the schema text."""

    subject: str
    version: int
    id: int
    schema: str


class SchemaRegistryClient:
    """The registry at ``url`` (the base of its Confluent-compatible API). One HTTP session, made
    on first use, so a client can be built outside an event loop."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` (Avro, as JSON text) under ``subject``; its id. Registering a schema
        the subject holds already adds no version and answers the same id."""
        body = await self._call(
            "POST", f"/subjects/{_segment(subject)}/versions", {"schema": schema, "schemaType": "AVRO"}
        )
        return _int(body, "id", subject)

    async def versions(self, subject: str) -> list[int]:
        """The version numbers ``subject`` holds; empty for a subject never registered."""
        body = await self._call("GET", f"/subjects/{_segment(subject)}/versions", missing_ok=True)
        if body is None:
            return []
        if not isinstance(body, list) or not all(isinstance(v, int) for v in body):
            raise SchemaRegistryError(f"versions of {subject}: unexpected answer {body!r}")
        return list(body)

    async def version(self, subject: str, version: int) -> SubjectVersion:
        body = await self._call("GET", f"/subjects/{_segment(subject)}/versions/{version}")
        return SubjectVersion(subject, version, _int(body, "id", subject), _str(body, "schema", subject))

    async def schema(self, schema_id: int) -> str | None:
        """The schema text of ``schema_id``; ``None`` when the registry has no such id."""
        body = await self._call("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        return None if body is None else _str(body, "schema", f"id {schema_id}")

    async def _call(self, method: str, path: str, json: Any = None, *, missing_ok: bool = False) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = self.url + path
        headers = {"Accept": CONTENT_TYPE, **({"Content-Type": CONTENT_TYPE} if json is not None else {})}
        try:
            async with self._session.request(method, url, json=json, headers=headers) as resp:
                text = await resp.text()
                if resp.status == 404 and missing_ok:
                    return None
                if resp.status >= 400:
                    raise SchemaRegistryError(
                        f"{method} {url}: HTTP {resp.status} {text[:500]}", retryable=resp.status >= 500
                    )
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SchemaRegistryError(f"{method} {url}: {exc!r}", retryable=True) from exc


def _segment(subject: str) -> str:
    """A subject as one URL path segment (topic names may hold dots only, but be safe)."""
    return quote(subject, safe="")


def _int(body: Any, key: str, what: str) -> int:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, int):
        raise SchemaRegistryError(f"{what}: the registry's answer has no {key}: {body!r}")
    return value


def _str(body: Any, key: str, what: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise SchemaRegistryError(f"{what}: the registry's answer has no {key}: {body!r}")
    return value
