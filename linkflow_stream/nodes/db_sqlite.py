"""The SQLite backend of the ``db`` node: connections to one file, on a thread of their own."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.nodes.db_query import Dialect, Query, QueryResult, check_columns
from linkflow_stream.nodes.db_sqlite_policy import StatementAuthorizer


def sqlite_uri(url: str) -> str:
    """``sqlite:///a/b.db?x=y`` as the ``file:`` URI SQLite opens, with ``mode=rw`` unless set."""
    rest = url[len("sqlite:///") :]
    path, _, options = rest.partition("?")
    uri = "file:" + quote(os.path.abspath(path), safe="/")
    if not any(part.split("=", 1)[0] == "mode" for part in options.split("&") if part):
        options = f"{options}&mode=rw" if options else "mode=rw"
    return f"{uri}?{options}"


def read_only_uri(uri: str) -> str:
    """The ``file:`` URI ``uri`` opened read-only: its ``mode`` option replaced by ``mode=ro``."""
    base, _, options = uri.partition("?")
    kept = [part for part in options.split("&") if part and part.split("=", 1)[0] != "mode"]
    return f"{base}?{'&'.join([*kept, 'mode=ro'])}"


_SQLITE_CONNECTION = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOMEM,
}
_SQLITE_CONTENTION = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_SQLITE_BROKEN_FILE = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}
_SQLITE_LIMIT = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_TOOBIG}
_NEEDS_A_WRITER = {
    sqlite3.SQLITE_READONLY_ROLLBACK,
    sqlite3.SQLITE_READONLY_RECOVERY,
    sqlite3.SQLITE_READONLY_CANTINIT,
}
"""What a ``mode=ro`` connection says about a file that a writable connection must repair first."""


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
    """Two ``sqlite3`` connections to one file, used only from their own thread.

    Writing runs use the connection opened with the configured URI; ``read_only`` runs use one
    opened with ``mode=ro`` and ``query_only``, so a read-only run cannot write the file even
    through a gap in the authorizer, and runs of one kind see nothing the other kind left on its
    connection (``changes()``, ``last_insert_rowid()``). Every statement runs under the
    authorizer of ``db_sqlite_policy`` (no ``ATTACH``, no temporary objects, listed pragmas
    only), so no run leaves anything on a connection for the runs after it.

    A statement is one call on that thread: set the busy timeout, ``BEGIN``, execute under the
    authorizer, fetch at most ``max_rows + 1`` rows, ``COMMIT`` (``ROLLBACK`` on any error). A
    progress handler stops the statement at its deadline or when the awaiting task is cancelled,
    so an abandoned statement does not hold the connection.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, name: str, uri: str) -> None:
        self.name = name
        self._uris = {False: uri, True: read_only_uri(uri)}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"linkflow-db-{name}")
        self._conns: dict[bool, sqlite3.Connection] = {}  # by read_only; touched only on self._thread

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

    def _connection(self, read_only: bool) -> sqlite3.Connection:
        conn = self._conns.get(read_only)
        if conn is None:
            conn = sqlite3.connect(self._uris[read_only], uri=True, isolation_level=None)
            if read_only:  # mode=ro guards the file; query_only guards the temp database too
                conn.execute("PRAGMA query_only = ON")
            self._conns[read_only] = conn
        return conn

    def _run(self, query: Query, stop: threading.Event) -> QueryResult:
        try:
            return self._run_once(query, stop)
        except sqlite3.OperationalError as exc:
            if not query.read_only or exc.sqlite_errorcode not in _NEEDS_A_WRITER:
                raise
        # A writer that crashed mid-transaction left a hot journal (or a WAL to recover), which
        # only a writable connection may roll back: it does so when it next reads.
        self._connection(read_only=False).execute("select count(*) from sqlite_master")
        return self._run_once(query, stop)

    def _run_once(self, query: Query, stop: threading.Event) -> QueryResult:
        conn = self._connection(query.read_only)
        deadline = time.monotonic() + query.timeout_seconds
        conn.execute(f"PRAGMA busy_timeout = {query.timeout_millis:d}")
        conn.execute("BEGIN")
        try:
            conn.set_progress_handler(lambda: stop.is_set() or time.monotonic() > deadline, 1000)
            authorizer = StatementAuthorizer(read_only=query.read_only)
            # Setting an authorizer expires every prepared statement, so one that sqlite3 cached
            # earlier (the same SQL in an earlier run) is compiled again under this one.
            conn.set_authorizer(authorizer)
            try:
                cursor = self._execute(conn, query, authorizer)
                try:
                    columns = [d[0] for d in cursor.description or ()]
                    check_columns(self.name, columns)
                    rows = cursor.fetchmany(query.max_rows + 1) if columns else []
                finally:
                    # Resets the statement: a half-read one (above all a write with RETURNING)
                    # would otherwise stay "in progress" and block every later COMMIT.
                    cursor.close()
            finally:
                conn.set_authorizer(None)  # our own statements (COMMIT, pragmas) are not a run's
                conn.set_progress_handler(None, 0)
            conn.execute("COMMIT")
        except BaseException:
            self._abort(query.read_only)
            raise
        return QueryResult(columns, rows[: query.max_rows], len(rows) > query.max_rows)

    def _execute(
        self, conn: sqlite3.Connection, query: Query, authorizer: StatementAuthorizer
    ) -> sqlite3.Cursor:
        """The executed statement; one the authorizer refused fails as ``validation`` with its reason."""
        try:
            return conn.execute(query.sql, dict(query.params))
        except sqlite3.DatabaseError as exc:
            if authorizer.refused is None:
                raise
            raise NodeFailure("validation", f"database {self.name!r}: {authorizer.refused}") from exc

    def _abort(self, read_only: bool) -> None:
        """Roll back; a connection that cannot is closed, so the next statement starts clean."""
        conn = self._conns.get(read_only)
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            del self._conns[read_only]

    def _close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)
