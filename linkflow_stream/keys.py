"""``linkflow keys``: create, list and revoke API keys straight on ``linkflow.keys``.

The CLI writes to Kafka, not through the API, so the first admin key can be made before any
engine runs (an engine that requires keys refuses to start without one). Admins can do the same
over HTTP (``/api/keys``); both write the same records.
"""

from __future__ import annotations

from linkflow_stream.core import topic_names
from linkflow_stream.core.auth import ApiKey, Role, new_key
from linkflow_stream.core.clock import now
from linkflow_stream.core.errors import NotFoundError
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.kafka.codecs import codec_for, registered_codec
from linkflow_stream.kafka.log_reader import LogReader
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.settings import Settings
from projections.keys import KeyView

KEY_CREATED = "io.linkflow.key.created"
KEY_REVOKED = "io.linkflow.key.revoked"


def key_record(record: ApiKey, ce_type: str) -> Outgoing:
    return Outgoing(topic_names.KEYS, record.id, record, ce_type, time=record.revoked_at or record.created_at)


async def load_keys(settings: Settings) -> KeyView:
    """Every key's latest record, read to the topic's end."""
    view = KeyView()
    codec = codec_for(settings)
    reader = LogReader(
        settings.bootstrap_servers,
        [settings.topic(topic_names.KEYS)],
        lambda record: view.apply(codec.decode(record.value, ApiKey)),
        prepare=codec.learner,
    )
    await reader.start()
    try:
        await reader.caught_up.wait()
    finally:
        await reader.stop()
        await codec.close()
    return view


async def _publish(settings: Settings, item: Outgoing) -> None:
    codec = await registered_codec(settings)
    publisher = Publisher(settings, codec)
    await publisher.start()
    try:
        await publisher.send([item])
    finally:
        await publisher.stop()
        await codec.close()


async def create_key(settings: Settings, team: str, role: Role, name: str = "") -> tuple[str, ApiKey]:
    """A new key, stored; the key text is returned here and nowhere else."""
    key, record = new_key(team, role, name, now())
    await _publish(settings, key_record(record, KEY_CREATED))
    return key, record


async def revoke_key(settings: Settings, key_id: str) -> ApiKey:
    """Mark a key revoked (kept, so it stays refused and listed)."""
    record = (await load_keys(settings)).keys.get(key_id)
    if record is None:
        raise NotFoundError(f"no key with id {key_id!r}")
    if record.revoked_at is not None:
        return record
    revoked = record.model_copy(update={"revoked_at": now()})
    await _publish(settings, key_record(revoked, KEY_REVOKED))
    return revoked
