"""The PostgreSQL backend of the ``db`` node: a lazily created asyncpg pool per connection, whose
connections go back to it as fresh sessions (``_reset_connection``)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.nodes.db_query import Dialect, Query, QueryResult, check_columns

PgRange: Any = asyncpg.Range
"""The value asyncpg gives for a PostgreSQL range column."""


_PG_RETRYABLE_STATES = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available",
    "57P01": "server shutting down",
    "57P02": "server crashed",
    "57P03": "server not accepting connections yet",
    "57P05": "idle session timeout",
}


def pg_failure(name: str, exc: BaseException, order: Sequence[str] = ()) -> NodeFailure:
    """The node failure for an asyncpg or socket error; ``order`` names ``$n`` in messages.

    SQLSTATE 40001 (serialization failure) and 40P01 (deadlock) are class ``connection`` and
    retryable: the server rolled the whole transaction back, nothing was committed, and the same
    statement may well succeed on its next attempt, which is exactly what a dropped connection
    means to the retry logic. (No new class: the set in ``RETRYABLE_CLASSES`` stays closed.)
    57014 (``query_canceled``, which is what ``statement_timeout`` raises) is ``timeout``.
    Authentication failures (class 28) and a missing database (3D000) are ``connection`` but not
    retryable. Everything the statement itself got wrong (syntax, constraints, bad values,
    permissions, a write in a read-only transaction) is ``validation``.
    """
    prefix = f"database {name!r}"
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        # asyncpg raises its client-side encoding errors as DataError (22000) with no server message.
        text = f"{prefix}: SQLSTATE {state}: {_named(exc.message or str(exc), order)}"
        detail = getattr(exc, "detail", None)
        if detail:
            text += f" ({detail})"
        if state == "57014":
            return NodeFailure("timeout", f"{text} (statement timeout)")
        if state in _PG_RETRYABLE_STATES or state[:2] in ("08", "53", "58"):
            return NodeFailure("connection", text)
        if state[:2] == "28" or state in ("3D000", "57P04"):
            return NodeFailure("connection", text, retryable=False)
        if state == "25006":
            return NodeFailure("validation", f"{text}; the node is read_only")
        if state[:2] == "54":
            return NodeFailure("resource_limit", text)
        return NodeFailure("validation", text)
    text = f"{prefix}: {type(exc).__name__}: {_named(str(exc), order)}"
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return NodeFailure("connection", text, retryable=False)
    if isinstance(exc, ValueError):  # asyncpg's client-side DataError: a value it cannot encode
        return NodeFailure("validation", text)
    # InterfaceError (connection closed under us), OSError (refused, unreachable, DNS), or the
    # connect timeout: the database was not reachable.
    return NodeFailure("connection", text)


def _named(message: str, order: Sequence[str]) -> str:
    """asyncpg's ``query argument $2`` as ``parameter :name``, the name the config uses."""

    def name(match: re.Match[str]) -> str:
        n = int(match.group(1))
        return f"parameter :{order[n - 1]}" if 0 < n <= len(order) else match.group()

    return re.sub(r"query argument \$(\d+)", name, message)


def _pg_param(type_name: str, value: Any) -> Any:
    """A JSON value as the Python value asyncpg's codec for ``type_name`` takes.

    JSON has no dates, decimals or bytes, so the common cases are converted: ISO strings for
    ``date``/``time``/``timestamp``/``timestamptz``, numbers or strings for ``numeric`` (a float
    goes through its shortest repr, so ``0.1`` binds as exactly ``0.1``), seconds for
    ``interval`` and base64 strings for ``bytea``. ``json``/``jsonb`` take any JSON value.
    Other values are passed as they are and asyncpg decides.
    """
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, str):
        if type_name == "date":
            return date.fromisoformat(value)
        # Like PostgreSQL's own text input: ``timestamp``/``time`` ignore an offset, and
        # ``timestamptz`` takes a string without one as UTC (asyncpg's rule for naive values).
        if type_name == "timestamptz":
            return datetime.fromisoformat(value)
        if type_name == "timestamp":
            return datetime.fromisoformat(value).replace(tzinfo=None)
        if type_name == "timetz":
            return time_of_day.fromisoformat(value)
        if type_name == "time":
            return time_of_day.fromisoformat(value).replace(tzinfo=None)
        if type_name == "bytea":
            return base64.b64decode(value, validate=True)
        if type_name == "numeric":
            return Decimal(value)
    elif number and type_name == "numeric":
        return Decimal(repr(value))
    elif number and type_name == "interval":
        return timedelta(seconds=value)
    return value


async def _init_connection(conn: Any) -> None:
    """``json``/``jsonb`` as JSON values both ways (asyncpg's default is text)."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: Any) -> None:
    """A connection goes back to the pool as a new session would start: ``DISCARD ALL``.

    One pool serves every run on the worker, so whatever one run changes on its session would
    steer the next run on that connection. asyncpg's own reset (``RESET ALL``, ``UNLISTEN``,
    advisory locks) keeps ``SET ROLE``, ``SET SESSION AUTHORIZATION``, temporary tables and
    ``PREPARE``d statements; ``DISCARD ALL`` drops those too. (asyncpg has rolled back any open
    transaction before this runs.) A ``RESET`` in a run has nothing to undo: the session's
    defaults are the server's and the URL's, which ``DISCARD ALL`` returns to.
    """
    await conn.execute("DISCARD ALL")


class PostgresDatabase:
    """An asyncpg pool of at most ``max_size`` connections, none opened before the first statement."""

    dialect: Dialect = "postgresql"

    def __init__(self, name: str, dsn: str, *, max_size: int) -> None:
        self.name = name
        self._dsn = dsn
        self._max_size = max_size
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:  # one pool, even when the first statements come together
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._max_size,
                    init=_init_connection,
                    reset=_reset_connection,
                    # DISCARD ALL deallocates prepared statements, which a statement cache would
                    # then name again ("prepared statement does not exist"); a run prepares its
                    # statement anyway.
                    statement_cache_size=0,
                )
            return self._pool

    async def run(self, query: Query) -> QueryResult:
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                return await self._run(conn, query)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise pg_failure(self.name, exc, query.order) from exc

    async def _run(self, conn: Any, query: Query) -> QueryResult:
        async with conn.transaction(readonly=query.read_only):
            # Our own integer, so a simple query: one round trip, nothing to prepare (no statement cache).
            await conn.execute(f"SET LOCAL statement_timeout = {query.timeout_millis:d}")
            stmt = await conn.prepare(query.sql)
            types = stmt.get_parameters()
            if len(types) != len(query.order):  # only if the server lexes the SQL differently
                raise NodeFailure(
                    "validation",
                    f"database {self.name!r}: the server sees {len(types)} parameters where the node "
                    f"found {len(query.order)} (:{', :'.join(query.order)}); is a quote unbalanced?",
                )
            args = [self._arg(n, t.name, query.params[n]) for n, t in zip(query.order, types, strict=True)]
            columns = [str(a.name) for a in stmt.get_attributes()]
            check_columns(self.name, columns)
            if not columns:
                await stmt.fetch(*args)
                return QueryResult([], [], truncated=False)
            cursor = await stmt.cursor(*args)
            records: Sequence[Any] = await cursor.fetch(query.max_rows + 1)
        rows = [tuple(r) for r in records]
        return QueryResult(columns, rows[: query.max_rows], len(rows) > query.max_rows)

    def _arg(self, name: str, type_name: Any, value: Any) -> Any:
        try:
            return _pg_param(str(type_name), value)
        except (ValueError, InvalidOperation) as exc:
            raise NodeFailure(
                "validation", f"database {self.name!r}: params.{name}: not a valid {type_name}: {exc}"
            ) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except TimeoutError:
            pool.terminate()
