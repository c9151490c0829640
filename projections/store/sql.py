"""The read model's tables and statements, written once for SQLite and PostgreSQL.

Statements use ``?`` placeholders; ``numbered`` turns them into asyncpg's ``$1, $2, ...``. The
two dialects differ only in the type of the state column (``BLOB`` / ``BYTEA``), which
``schema(dialect)`` fills in. Every query the API makes has an index that starts with its filter
and ends with (created, id), the order pages are read in, so a page costs the same with a
thousand runs stored as with millions.
"""

# ruff: noqa: S608 - statements are assembled from fixed table and column names; every value is a
# bound parameter
from __future__ import annotations

import re
from typing import Literal

from projections.store.rows import ExecutionQuery, ExecutionRow, LineRow, NodeNetworkRow

Dialect = Literal["sqlite", "postgresql"]

SCHEMA_VERSION = 6
"""Bumped when a table changes shape; a store of another version is rebuilt from the log."""

_TABLES = """
CREATE TABLE IF NOT EXISTS view_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS view_offsets (
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, part)
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    team TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    seq INTEGER NOT NULL,
    state {blob} NOT NULL,
    body TEXT NOT NULL,
    summary TEXT NOT NULL,
    total_cost DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    network_bytes BIGINT NOT NULL,
    cost_attempts DOUBLE PRECISION NOT NULL,
    cost_events DOUBLE PRECISION NOT NULL,
    cost_compute DOUBLE PRECISION NOT NULL,
    cost_cpu DOUBLE PRECISION NOT NULL,
    cost_network DOUBLE PRECISION NOT NULL,
    linked_to TEXT,
    link_kind TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_created ON executions (created_ms, id);
CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status, created_ms, id);
CREATE INDEX IF NOT EXISTS executions_by_workflow ON executions (workflow_id, created_ms, id);
CREATE INDEX IF NOT EXISTS executions_by_team ON executions (team, created_ms, id);
CREATE INDEX IF NOT EXISTS executions_by_priority ON executions (priority, created_ms, id);
CREATE INDEX IF NOT EXISTS executions_by_finished ON executions (finished_ms)
    WHERE finished_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_live ON executions (id) WHERE finished_ms IS NULL;
CREATE INDEX IF NOT EXISTS executions_by_link ON executions (linked_to, created_ms, id)
    WHERE linked_to IS NOT NULL;
CREATE TABLE IF NOT EXISTS log_lines (
    execution_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    at TEXT NOT NULL,
    level SMALLINT NOT NULL,
    node_id TEXT,
    message TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (execution_id, seq, n)
);
CREATE TABLE IF NOT EXISTS node_network (
    execution_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    team TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    network_bytes BIGINT NOT NULL,
    PRIMARY KEY (execution_id, node_id)
);
CREATE INDEX IF NOT EXISTS node_network_by_created ON node_network (created_ms);
"""

DROP = [
    "DROP TABLE IF EXISTS node_network",
    "DROP TABLE IF EXISTS log_lines",
    "DROP TABLE IF EXISTS executions",
    "DROP TABLE IF EXISTS view_offsets",
    "DROP TABLE IF EXISTS view_meta",
]


def schema(dialect: Dialect) -> list[str]:
    """The statements that create every table and index (idempotent)."""
    text = _TABLES.format(blob="BLOB" if dialect == "sqlite" else "BYTEA")
    return [s.strip() for s in text.split(";") if s.strip()]


EXECUTION_COLUMNS = (
    "id, workflow_id, workflow_version, team, status, priority, created_ms, finished_ms, seq, state, body, "
    "summary, total_cost, attempts, retries, network_bytes, cost_attempts, cost_events, cost_compute, "
    "cost_cpu, cost_network, linked_to, link_kind"
)

UPSERT_EXECUTION = f"""
INSERT INTO executions ({EXECUTION_COLUMNS})
VALUES ({", ".join("?" * 23)})
ON CONFLICT (id) DO UPDATE SET
    workflow_id = excluded.workflow_id, workflow_version = excluded.workflow_version,
    team = excluded.team, status = excluded.status, priority = excluded.priority,
    created_ms = excluded.created_ms, finished_ms = excluded.finished_ms, seq = excluded.seq,
    state = excluded.state, body = excluded.body, summary = excluded.summary,
    total_cost = excluded.total_cost,
    attempts = excluded.attempts,
    retries = excluded.retries, network_bytes = excluded.network_bytes,
    cost_attempts = excluded.cost_attempts, cost_events = excluded.cost_events,
    cost_compute = excluded.cost_compute, cost_cpu = excluded.cost_cpu,
    cost_network = excluded.cost_network, linked_to = excluded.linked_to,
    link_kind = excluded.link_kind
WHERE executions.seq < excluded.seq
    OR (executions.seq = 0 AND excluded.seq = 0 AND executions.finished_ms IS NULL
        AND excluded.finished_ms IS NOT NULL)
"""
"""A row is only ever replaced by a later one, so replaying a batch cannot move a run back: one
of a later seq, or (a run that never started, seq 0) a rejected one over a pending one, its start
request dead-lettered (``StatusView.reject``)."""


def execution_params(r: ExecutionRow) -> tuple[object, ...]:
    """``UPSERT_EXECUTION``'s parameters, in ``EXECUTION_COLUMNS`` order."""
    return (
        r.id, r.workflow_id, r.workflow_version, r.team, r.status, r.priority, r.created_ms,
        r.finished_ms, r.seq, r.state, r.body, r.summary, r.total_cost, r.attempts, r.retries,
        r.network_bytes, r.cost_attempts, r.cost_events, r.cost_compute, r.cost_cpu, r.cost_network,
        r.linked_to, r.link_kind,
    )  # fmt: skip


def line_params(r: LineRow) -> tuple[object, ...]:
    return (r.execution_id, r.seq, r.n, r.at, r.level, r.node_id, r.message, r.data)


def network_params(r: NodeNetworkRow) -> tuple[object, ...]:
    return (r.execution_id, r.node_id, r.workflow_id, r.team, r.created_ms, r.seq, r.network_bytes)


INSERT_LINE = """
INSERT INTO log_lines (execution_id, seq, n, at, level, node_id, message, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (execution_id, seq, n) DO NOTHING
"""

UPSERT_NODE_NETWORK = """
INSERT INTO node_network (execution_id, node_id, workflow_id, team, created_ms, seq, network_bytes)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (execution_id, node_id) DO UPDATE SET
    seq = excluded.seq, network_bytes = excluded.network_bytes
WHERE node_network.seq < excluded.seq
"""

UPSERT_POSITION = """
INSERT INTO view_offsets (topic, part, next_offset) VALUES (?, ?, ?)
ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset
WHERE view_offsets.next_offset < excluded.next_offset
"""

UPSERT_META = """
INSERT INTO view_meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

SELECT_META = "SELECT value FROM view_meta WHERE key = ?"
SELECT_POSITIONS = "SELECT topic, part, next_offset FROM view_offsets"
SELECT_LIVE = "SELECT state FROM executions WHERE finished_ms IS NULL"
COUNT_EXECUTIONS = "SELECT COUNT(*) FROM executions"
SELECT_LINKED = "SELECT link_kind, id FROM executions WHERE linked_to = ? ORDER BY created_ms, id"
"""The runs that link to one run (its reruns, children, ...), oldest first."""


def select_states(count: int) -> str:
    return f"SELECT id, seq, state, body FROM executions WHERE id IN ({', '.join('?' * count)})"


def select_page(q: ExecutionQuery) -> tuple[str, list[object]]:
    """Newest first, filtered, after the cursor; one row more than the page, to know if another
    page follows."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (
        ("status", q.status),
        ("workflow_id", q.workflow_id),
        ("team", q.team),
        ("priority", q.priority),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if q.created_after_ms is not None:
        where.append("created_ms >= ?")
        params.append(q.created_after_ms)
    if q.created_before_ms is not None:
        where.append("created_ms < ?")
        params.append(q.created_before_ms)
    if q.after is not None:
        where.append("(created_ms < ? OR (created_ms = ? AND id < ?))")
        params += [q.after.created_ms, q.after.created_ms, q.after.id]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    served = "summary" if q.summary else "body"
    sql = (
        f"SELECT {served}, created_ms, id FROM executions {clause} ORDER BY created_ms DESC, id DESC LIMIT ?"
    )
    return sql, [*params, q.limit + 1]


def select_lines(
    execution_id: str, *, floor: int, node_id: str | None, text: str | None, limit: int
) -> tuple[str, list[object]]:
    """The last ``limit`` lines at a level or above, of one node, containing ``text`` (newest
    first; the caller reverses them)."""
    sql = "SELECT at, level, node_id, message, data FROM log_lines WHERE execution_id = ? AND level >= ?"
    params: list[object] = [execution_id, floor]
    if node_id is not None:
        sql += " AND node_id = ?"
        params.append(node_id)
    if text is not None:
        sql += " AND LOWER(message) LIKE ? ESCAPE '\\'"
        params.append(like_pattern(text))
    return sql + " ORDER BY seq DESC, n DESC LIMIT ?", [*params, limit]


def like_pattern(text: str) -> str:
    """``text`` as a case-insensitive substring pattern, its own ``%`` and ``_`` taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _cost_filter(since: bool, team: bool) -> str:
    """The WHERE of a cost query; its parameters are (since, team), those that apply, in order."""
    conditions = [c for c, on in (("created_ms >= ?", since), ("team = ?", team)) if on]
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def select_cost_groups(group_column: str, since: bool, team: bool = False) -> str:
    """Sums per workflow or team, over runs created since a time (or all), of one team (or all)."""
    assert group_column in ("workflow_id", "team")
    where = _cost_filter(since, team)
    return f"""
SELECT {group_column}, COUNT(*), SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END),
    SUM(total_cost), SUM(attempts), SUM(retries), SUM(network_bytes), SUM(cost_attempts),
    SUM(cost_events), SUM(cost_compute), SUM(cost_cpu), SUM(cost_network)
FROM executions {where} GROUP BY {group_column}
"""


def select_node_network(group_column: str, since: bool, team: bool = False) -> str:
    """Bytes per (group, node), for the "this node moves most of the bytes" suggestion."""
    assert group_column in ("workflow_id", "team")
    where = _cost_filter(since, team)
    return (
        f"SELECT {group_column}, node_id, SUM(network_bytes) FROM node_network {where} "
        f"GROUP BY {group_column}, node_id"
    )


SELECT_EXPIRED = (
    "SELECT id FROM executions WHERE finished_ms IS NOT NULL AND finished_ms < ? ORDER BY finished_ms LIMIT ?"
)


def delete_by_ids(table: str, column: str, count: int) -> str:
    assert table in ("executions", "log_lines", "node_network")
    return f"DELETE FROM {table} WHERE {column} IN ({', '.join('?' * count)})"


SELECT_ALL_ROWS = "SELECT id, seq, state, body, summary FROM executions ORDER BY id"
SELECT_ALL_LINES = (
    "SELECT execution_id, seq, n, at, level, node_id, message, data FROM log_lines "
    "ORDER BY execution_id, seq, n"
)


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no statement here has a literal ``?``)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)
