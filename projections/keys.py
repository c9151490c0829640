"""The API-key view: the latest record of every key, folded from ``linkflow.keys``.

Every instance folds the whole (compacted, small) topic, so a key created or revoked anywhere,
by the CLI or the API, is known everywhere within a fetch.
"""

from __future__ import annotations

from linkflow_stream.core.auth import ApiKey, matches, split_key


class KeyView:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}

    def apply(self, record: ApiKey) -> None:
        """Take a key's latest record; a revoked key stays revoked (the reader may replay its
        creation after this instance applied the revocation itself)."""
        known = self.keys.get(record.id)
        if known is not None and known.revoked_at is not None and record.revoked_at is None:
            return
        self.keys[record.id] = record

    def knows(self, key_id: str) -> bool:
        return key_id in self.keys

    def check(self, key: str) -> ApiKey | None:
        """The active key this text is, else ``None`` (malformed, unknown, wrong secret, revoked)."""
        parts = split_key(key)
        return None if parts is None else self.check_parts(*parts)

    def check_parts(self, key_id: str, secret: str) -> ApiKey | None:
        """``check`` of a key already split (``core.auth.split_key``)."""
        record = self.keys.get(key_id)
        if record is None or not record.active or not matches(record, secret):
            return None
        return record

    def any_active(self) -> bool:
        return any(k.active for k in self.keys.values())

    def listed(self) -> list[ApiKey]:
        """Every key, oldest first."""
        return sorted(self.keys.values(), key=lambda k: (k.created_at, k.id))
