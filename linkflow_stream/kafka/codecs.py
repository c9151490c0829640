"""Which codec a process uses: the default one, or one that writes through the schema registry
(``LINKFLOW_SCHEMA_REGISTRY_URL``, ADR 0025).

A process that only reads needs no registration: ``Codec.learn`` fetches the ids it meets. A
process that writes registers first, so that what it writes carries the registry's ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from linkflow_stream.kafka.codec import Codec, default_codec
from linkflow_stream.kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from linkflow_stream.kafka.topics import value_schemas
from linkflow_stream.settings import Settings

log = logging.getLogger(__name__)

REGISTER_WITHIN_SECONDS = 60.0
"""How long a start waits for the registry to answer (it may be starting beside the engine)."""


def codec_for(settings: Settings) -> Codec:
    """The default codec, or, with a registry URL, one that reads both encodings (ids learnt
    as met) and writes the Confluent wire format for the topics it has registered."""
    if settings.schema_registry_url is None:
        return default_codec()
    return default_codec().with_registry(SchemaRegistryClient(settings.schema_registry_url))


async def register_schemas(
    codec: Codec, settings: Settings, pools: Iterable[str] = (), within: float = REGISTER_WITHIN_SECONDS
) -> dict[str, int]:
    """Register every topic's value schema (task pools' included) and fetch what the subjects
    hold; the id per subject. A registry that cannot answer is asked again until ``within``
    runs out; one that refuses (a 4xx: say, an incompatible schema) fails at once."""
    topics = value_schemas(settings, pools)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.5
    while True:
        try:
            await codec.register(topics)
            break
        except SchemaRegistryError as exc:
            if not exc.retryable or loop.time() + delay > deadline:
                raise
            log.warning("schema registry not answering (%s); again in %.1fs", exc.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    assert codec.ids is not None
    return {subject: codec.ids.by_subject[subject] for subject in sorted(codec.ids.by_subject)}


async def registered_codec(settings: Settings, pools: Iterable[str] = ()) -> Codec:
    """``codec_for(settings)``, registered when it has a registry: what a writing process uses."""
    codec = codec_for(settings)
    if codec.ids is not None:
        await register_schemas(codec, settings, pools)
    return codec
