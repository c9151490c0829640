"""An outgoing record as the pure core describes it: logical topic, key, model and CloudEvents
type. The Kafka edge (``kafka/records.py``) encodes it; the core never sees bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel


@dataclass(frozen=True)
class Outgoing:
    """One record to produce. ``topic`` is the logical name; the settings add any prefix."""

    topic: str
    key: str
    record: BaseModel
    ce_type: str
    ce_id: str | None = None
    time: datetime | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
