"""The workflow registry view: the latest version of every workflow, folded from
``linkflow.workflows``, and a line for every version the log holds (ADR 0048).

Every version is a record of its own on the log (key ``<id>@<version>``), so compaction keeps
them all. Memory keeps the latest definition of each workflow whole and, of an older version,
only its line: what the versions list shows and where its record is. An older version asked for
(a start that names it, ``GET /api/workflows/{id}?version=N``) is read back from the log and
kept in a cache bounded by bytes, so a workflow registered a thousand times costs a thousand
lines, not a thousand definitions.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from linkflow_stream.core.workflow import WorkflowDefinition

OLD_VERSION_CACHE_BYTES = 2 * 1024 * 1024
"""Encoded bytes of older versions kept decoded after a read from the log (a version pinned by
many starts is read once); the least recently used go first. A definition takes about twenty
times its encoded size in memory (a 10-node one: 889 bytes on the log, about 20 KB decoded), so
this is some 40 MB at most."""

Load = Callable[[int, int], Awaitable[bytes | None]]
"""The value of the record at (partition, offset) of ``linkflow.workflows``; ``None`` if no
record is there any more (compacted away)."""
Decode = Callable[[bytes], WorkflowDefinition]


def version_key(workflow_id: str, version: int) -> str:
    """A version's record key: one key per version, so compaction removes none of them."""
    return f"{workflow_id}@{version}"


@dataclass(frozen=True)
class VersionLine:
    """What is known of a version without its definition."""

    version: int
    name: str
    nodes: int
    created_at: datetime
    position: tuple[int, int] | None
    """(partition, offset) of its record; ``None`` while a version this instance published has
    not been read back from the log (held whole until then)."""


def _line(wf: WorkflowDefinition, position: tuple[int, int] | None) -> VersionLine:
    return VersionLine(wf.version, wf.name, len(wf.nodes), wf.created_at, position)


class WorkflowView:
    def __init__(self, load: Load | None = None, decode: Decode | None = None) -> None:
        self.latest: dict[str, WorkflowDefinition] = {}
        self._lines: dict[str, dict[int, VersionLine]] = {}
        self._unread: dict[tuple[str, int], WorkflowDefinition] = {}
        """Versions this instance published and has not read back: their position is unknown."""
        self._load = load
        self._decode = decode
        self._cache: OrderedDict[tuple[str, int], tuple[WorkflowDefinition, int]] = OrderedDict()
        self._cached_bytes = 0
        self._reading: dict[VersionLine, asyncio.Future[WorkflowDefinition | None]] = {}

    def apply(self, wf: WorkflowDefinition, position: tuple[int, int] | None = None) -> None:
        """Fold a version read from the log at ``position``, or (``None``) one this instance has
        just published, so a read right after finds it."""
        key = (wf.id, wf.version)
        lines = self._lines.setdefault(wf.id, {})
        if position is not None:
            lines[wf.version] = _line(wf, position)
            self._unread.pop(key, None)
            self._forget_cached(key)  # two instances raced for this version: the later record holds
        elif wf.version not in lines or lines[wf.version].position is None:
            lines[wf.version] = _line(wf, None)
            self._unread[key] = wf
        else:  # read back already, perhaps with another instance's record of the same version after it
            return
        current = self.latest.get(wf.id)
        if current is None or wf.version >= current.version:
            self.latest[wf.id] = wf

    def get(self, workflow_id: str) -> WorkflowDefinition | None:
        return self.latest.get(workflow_id)

    def versions_of(self, workflow_id: str) -> list[VersionLine]:
        """Every version of the workflow, newest first."""
        return sorted(self._lines.get(workflow_id, {}).values(), key=lambda line: -line.version)

    async def version(self, workflow_id: str, version: int) -> WorkflowDefinition | None:
        """That version's definition: from memory if it is the latest, else read from the log.
        ``None`` if the workflow never had it, or its record is gone (a version written before
        records were keyed by version, compacted away). Raises if the log cannot be read."""
        latest = self.latest.get(workflow_id)
        if latest is not None and latest.version == version:
            return latest
        key = (workflow_id, version)
        held = self._unread.get(key)
        if held is not None:
            return held
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[0]
        line = self._lines.get(workflow_id, {}).get(version)
        if line is None or line.position is None or self._load is None or self._decode is None:
            return None
        reading = self._reading.get(line)
        if reading is None:  # one read of a record, however many ask for it at once
            read = self._read(key, line, line.position, self._load, self._decode)
            reading = self._reading[line] = asyncio.ensure_future(read)
            reading.add_done_callback(partial(self._read_done, line))
        return await asyncio.shield(reading)  # a caller that gives up does not cancel the others

    def _read_done(self, line: VersionLine, reading: asyncio.Future[WorkflowDefinition | None]) -> None:
        self._reading.pop(line, None)
        if not reading.cancelled():
            reading.exception()  # retrieved: every caller that still waits gets it from its await

    async def _read(
        self, key: tuple[str, int], line: VersionLine, position: tuple[int, int], load: Load, decode: Decode
    ) -> WorkflowDefinition | None:
        value = await load(*position)
        if value is None:
            return None
        wf = decode(value)
        if (wf.id, wf.version) != key:  # the offset now holds another record
            return None
        if self._lines.get(key[0], {}).get(key[1]) == line:  # not replaced while it was read
            self._remember(key, wf, len(value))
        return wf

    def next_version(self, workflow_id: str) -> int:
        current = self.latest.get(workflow_id)
        return 1 if current is None else current.version + 1

    def _remember(self, key: tuple[str, int], wf: WorkflowDefinition, size: int) -> None:
        self._forget_cached(key)
        self._cache[key] = (wf, size)
        self._cached_bytes += size
        while len(self._cache) > 1 and self._cached_bytes > OLD_VERSION_CACHE_BYTES:
            _key, (_wf, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= dropped

    def _forget_cached(self, key: tuple[str, int]) -> None:
        dropped = self._cache.pop(key, None)
        if dropped is not None:
            self._cached_bytes -= dropped[1]
