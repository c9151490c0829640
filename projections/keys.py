"""The API-key view: the latest record of every key, folded from ``linkflow.keys``.

Every instance folds the whole (compacted, small) topic, so a key created or revoked anywhere,
by the CLI or the API, is known everywhere within a fetch. Workflows' webhook tokens live on the
same topic (``ApiKey.workflow_id`` set); they answer only ``check_webhook``, never ``check``.
"""

from __future__ import annotations

from linkflow_stream.core.auth import WEBHOOK_PREFIX, ApiKey, matches, split_key


class KeyView:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self._webhooks: dict[str, set[str]] = {}
        """Workflow id -> ids of its webhook tokens (revoked ones too)."""

    def apply(self, record: ApiKey) -> None:
        """Take a key's latest record; a revoked key stays revoked (the reader may replay its
        creation after this instance applied the revocation itself)."""
        known = self.keys.get(record.id)
        if known is not None and known.revoked_at is not None and record.revoked_at is None:
            return
        self.keys[record.id] = record
        if record.workflow_id is not None:
            self._webhooks.setdefault(record.workflow_id, set()).add(record.id)

    def knows(self, key_id: str) -> bool:
        return key_id in self.keys

    def check(self, key: str) -> ApiKey | None:
        """The active key this text is, else ``None`` (malformed, unknown, wrong secret, revoked)."""
        parts = split_key(key)
        return None if parts is None else self.check_parts(*parts)

    def check_parts(self, key_id: str, secret: str) -> ApiKey | None:
        """``check`` of a key already split (``core.auth.split_key``)."""
        record = self.keys.get(key_id)
        if record is None or record.is_webhook_token or not record.active or not matches(record, secret):
            return None
        return record

    def check_webhook(self, workflow_id: str, token: str) -> ApiKey | None:
        """The active webhook token of ``workflow_id`` this text is, else ``None``."""
        parts = split_key(token, WEBHOOK_PREFIX)
        if parts is None:
            return None
        record = self.keys.get(parts[0])
        if record is None or record.workflow_id != workflow_id or not record.active:
            return None
        return record if matches(record, parts[1]) else None

    def webhook_tokens(self, workflow_id: str) -> list[ApiKey]:
        """The active webhook tokens of ``workflow_id``, oldest first."""
        found = (self.keys[i] for i in self._webhooks.get(workflow_id, ()))
        return sorted((k for k in found if k.active), key=lambda k: (k.created_at, k.id))

    def any_active(self) -> bool:
        """Whether any API key (not a webhook token) is active: what a start requiring keys needs."""
        return any(k.active and not k.is_webhook_token for k in self.keys.values())

    def listed(self) -> list[ApiKey]:
        """Every API key (webhook tokens are the workflows'), oldest first."""
        return sorted(
            (k for k in self.keys.values() if not k.is_webhook_token), key=lambda k: (k.created_at, k.id)
        )
