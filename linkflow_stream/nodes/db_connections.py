"""Database connections of the ``db`` node: one lazily opened pool per configured name.

A connection is configured as a URL (``LINKFLOW_DATABASES``, a JSON object name -> URL):

* ``postgresql://user:pass@host:port/db`` (or ``postgres://``): an asyncpg pool, created at
  first use. Each statement runs in its own transaction (``READ ONLY`` when asked) with
  ``SET LOCAL statement_timeout``.
* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the SQLAlchemy form; a
  relative path is resolved against the working directory when the node is built): one
  ``sqlite3`` connection on a dedicated thread, so statements on one file run one at a time.
  The file is opened with ``mode=rw``: a missing file is a ``connection`` failure, not a new
  empty database. URI parameters after ``?`` are passed to SQLite (``?mode=rwc`` creates the file).

Every backend failure leaves here as a ``NodeFailure`` with the class the retry logic needs;
URLs never appear in messages, because they can hold passwords.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from linkflow_stream.core.node_contract import NodeFailure

Dialect = Literal["sqlite", "postgresql"]

PgRange: Any = asyncpg.Range
"""The value asyncpg gives for a PostgreSQL range column."""


@dataclass(frozen=True)
class Query:
    """One statement to run, with its parameters already checked against the SQL."""

    sql: str
    """SQL in the dialect's own placeholder style (``:name`` for SQLite, ``$n`` for PostgreSQL)."""
    params: Mapping[str, Any]
    order: tuple[str, ...]
    """Parameter names in ``$1..$n`` order (PostgreSQL only)."""
    read_only: bool
    max_rows: int
    timeout_seconds: float

    @property
    def timeout_millis(self) -> int:
        """The timeout as the databases take it: whole milliseconds, at least 1, a 32-bit int."""
        return min(max(1, math.ceil(self.timeout_seconds * 1000)), 2**31 - 1)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def check_columns(name: str, columns: Sequence[str]) -> None:
    """Refuse a result with two columns of one name (a row object cannot hold both); raised
    before the transaction commits, so a failed write leaves nothing behind."""
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise NodeFailure(
            "validation",
            f"database {name!r}: the result has more than one column named "
            f"{', '.join(duplicates)}; give them distinct aliases",
        )


class Database(Protocol):
    dialect: Dialect

    async def run(self, query: Query) -> QueryResult: ...

    async def close(self) -> None: ...


def dialect_of(name: str, url: str) -> Dialect:
    """The dialect of a configured URL; ``ValueError`` (naming the connection, not the URL) if none."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(
                f"database {name!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path"
            )
        return "sqlite"
    raise ValueError(f"database {name!r}: unsupported URL scheme {scheme!r}; use postgresql:// or sqlite:///")


def sqlite_uri(url: str) -> str:
    """``sqlite:///a/b.db?x=y`` as the ``file:`` URI SQLite opens, with ``mode=rw`` unless set."""
    rest = url[len("sqlite:///") :]
    path, _, options = rest.partition("?")
    uri = "file:" + quote(os.path.abspath(path), safe="/")
    if not any(part.split("=", 1)[0] == "mode" for part in options.split("&") if part):
        options = f"{options}&mode=rw" if options else "mode=rw"
    return f"{uri}?{options}"


class Databases:
    """The configured connections by name; each opened at first use, all closed by ``close``."""

    def __init__(self, urls: Mapping[str, str], *, pool_max_size: int = 10) -> None:
        self._urls = dict(urls)
        self.dialects: dict[str, Dialect] = {name: dialect_of(name, url) for name, url in self._urls.items()}
        self._pool_max_size = pool_max_size
        self._open: dict[str, Database] = {}

    def names(self) -> list[str]:
        return sorted(self._urls)

    def get(self, name: str) -> Database:
        """The database called ``name`` (a configured name); it connects when first used."""
        db = self._open.get(name)
        if db is None:
            url = self._urls[name]
            if self.dialects[name] == "sqlite":
                db = SqliteDatabase(name, sqlite_uri(url))
            else:
                db = PostgresDatabase(name, url, max_size=self._pool_max_size)
            self._open[name] = db
        return db

    async def close(self) -> None:
        opened, self._open = self._open, {}
        for db in opened.values():
            await db.close()


# --- SQLite -----------------------------------------------------------------------------------

_SQLITE_CONNECTION = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOMEM,
}
_SQLITE_CONTENTION = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_SQLITE_BROKEN_FILE = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}
_SQLITE_LIMIT = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_TOOBIG}


def sqlite_failure(name: str, exc: Exception) -> NodeFailure:
    """The node failure for an error of SQLite or of binding a parameter.

    ``SQLITE_INTERRUPT`` is the statement timeout (the progress handler stops the statement).
    ``SQLITE_BUSY``/``SQLITE_LOCKED`` is lock contention that outlived the busy timeout: class
    ``connection`` and retryable, like a PostgreSQL deadlock. A write under ``read_only`` is
    ``SQLITE_READONLY``: class ``validation``, see ``DbNode``.
    """
    if not isinstance(exc, sqlite3.Error):  # OverflowError, ValueError: a parameter SQLite cannot bind
        return NodeFailure("validation", f"database {name!r}: cannot bind a parameter: {exc}")
    # Errors raised by the sqlite3 module itself (two statements, a missing binding) have no code.
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    errname = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    message = f"database {name!r}: {errname}: {exc}"
    if code == sqlite3.SQLITE_INTERRUPT:
        return NodeFailure("timeout", f"{message} (statement timeout)")
    if code in _SQLITE_CONTENTION:
        return NodeFailure("connection", message)
    if code in _SQLITE_CONNECTION:
        return NodeFailure("connection", message)
    if code in _SQLITE_BROKEN_FILE:
        return NodeFailure("connection", message, retryable=False)
    if code in _SQLITE_LIMIT:
        return NodeFailure("resource_limit", message)
    if code == sqlite3.SQLITE_READONLY:
        return NodeFailure("validation", f"{message} (the node is read_only, or the file is read-only)")
    return NodeFailure("validation", message)


class SqliteDatabase:
    """One ``sqlite3`` connection, used only from its own thread.

    A statement is one call on that thread: set the busy timeout and ``query_only``, ``BEGIN``,
    execute, fetch at most ``max_rows + 1`` rows, ``COMMIT`` (``ROLLBACK`` on any error). A
    progress handler stops the statement at its deadline or when the awaiting task is cancelled,
    so an abandoned statement does not hold the connection.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, name: str, uri: str) -> None:
        self.name = name
        self._uri = uri
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"linkflow-db-{name}")
        self._conn: sqlite3.Connection | None = None  # touched only on self._thread

    async def run(self, query: Query) -> QueryResult:
        stop = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(self._thread, self._run, query, stop)
        try:
            return await job
        except asyncio.CancelledError:
            stop.set()
            raise
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise sqlite_failure(self.name, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._uri, uri=True, isolation_level=None)
        return self._conn

    def _run(self, query: Query, stop: threading.Event) -> QueryResult:
        conn = self._connection()
        deadline = time.monotonic() + query.timeout_seconds
        conn.execute(f"PRAGMA busy_timeout = {query.timeout_millis:d}")
        conn.execute(f"PRAGMA query_only = {'ON' if query.read_only else 'OFF'}")
        conn.execute("BEGIN")
        try:
            conn.set_progress_handler(lambda: stop.is_set() or time.monotonic() > deadline, 1000)
            try:
                cursor = conn.execute(query.sql, dict(query.params))
                try:
                    columns = [d[0] for d in cursor.description or ()]
                    check_columns(self.name, columns)
                    rows = cursor.fetchmany(query.max_rows + 1) if columns else []
                finally:
                    # Resets the statement: a half-read one (above all a write with RETURNING)
                    # would otherwise stay "in progress" and block every later COMMIT.
                    cursor.close()
            finally:
                conn.set_progress_handler(None, 0)
            conn.execute("COMMIT")
        except BaseException:
            self._abort(conn)
            raise
        return QueryResult(columns, rows[: query.max_rows], len(rows) > query.max_rows)

    def _abort(self, conn: sqlite3.Connection) -> None:
        """Roll back; a connection that cannot is closed, so the next statement starts clean."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            self._conn = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)


# --- PostgreSQL -------------------------------------------------------------------------------

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
                    self._dsn, min_size=0, max_size=self._max_size, init=_init_connection
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
            await conn.execute("select set_config('statement_timeout', $1, true)", str(query.timeout_millis))
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
