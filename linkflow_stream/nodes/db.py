"""``db``: one SQL statement against a configured database (PostgreSQL or SQLite).

Config::

    {"connection": "main",                      # a name from LINKFLOW_DATABASES
     "query": "select * from t where id = :id",  # one statement, :name placeholders
     "params": {"id": 42},                      # always bound, never interpolated
     "read_only": true,                         # default true
     "max_rows": 1000}                          # default 1000, at most 100000

The timeout is the node's ``timeout_seconds`` (the engine enforces it around the attempt); the
same value is also the statement timeout inside the database, so the server stops the work too.

Output: ``{"rows": [{column: value}], "row_count": n, "columns": [names], "truncated": bool}``.
At most ``max_rows`` rows are returned; ``truncated`` says whether there were more. A statement
that returns no rows (an ``UPDATE`` without ``RETURNING``) gives ``rows: []``. Two result
columns with the same name fail the node (alias them): a row object cannot hold both.

Values become JSON (see ``to_json``): ``numeric``/``Decimal`` becomes a JSON number (float):
JSON consumers, JSONata included, do arithmetic on numbers and not on strings, and a float
holds 15 significant digits exactly; select ``amount::text`` when more digits matter. Dates
and times become ISO 8601 strings, intervals seconds, bytes base64 strings, UUIDs strings,
NaN/Infinity the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``, arrays lists, ``json``/``jsonb``
their JSON value, ranges ``{"lower", "upper", "lower_inc", "upper_inc", "empty"}``, anything else
its ``str``. Parameters go the other way on PostgreSQL: an ISO string binds to a date/time type,
a number or string to ``numeric`` (exactly), seconds to ``interval``, base64 to ``bytea``, any
JSON value to ``json``/``jsonb`` (see ``db_postgres._pg_param``).

Placeholders: ``:name`` outside string literals, quoted identifiers, comments and (PostgreSQL)
dollar-quoted strings. ``::`` is PostgreSQL's cast (``:id::int`` is the parameter ``id`` cast
to int), and a ``:`` right after a letter, digit or ``_`` is not a placeholder (``arr[1:n]``,
``arr[lo:hi]``). Positional placeholders (``$1``, ``?``) are refused: name them.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from linkflow_stream.core import circuit
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.nodes.db_connections import Databases
from linkflow_stream.nodes.db_postgres import PgRange
from linkflow_stream.nodes.db_query import Dialect, Query, QueryResult

FIELDS = frozenset({"connection", "query", "params", "read_only", "max_rows", "circuit_breaker"})
DEFAULT_MAX_ROWS = 1000
MAX_ROWS_LIMIT = 100_000
SQLITE_INT = range(-(2**63), 2**63)

_NAME = re.compile(r"[^\W\d]\w*")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


class ParamSyntaxError(ValueError):
    """A query that uses placeholders this node does not bind (positional ones)."""


def _is_word(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool = False) -> int:
    """Index after the literal opened by ``sql[i]``; a doubled quote is an escaped quote."""
    j, n = i + 1, len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
        elif c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n  # unterminated: the database reports it


def _skip_block_comment(sql: str, i: int, *, nested: bool) -> int:
    depth, j, n = 1, i + 2, len(sql)
    while j < n:
        if nested and sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return n


def placeholders(sql: str, dialect: Dialect) -> list[tuple[int, int, str]]:
    """``(start, end, name)`` of every ``:name`` placeholder, in order.

    Skips ``'...'`` (with ``''``; ``E'...'`` also with backslash escapes on PostgreSQL),
    ``"..."``, ``--`` and ``/* */`` comments (nested on PostgreSQL), PostgreSQL ``$tag$...$tag$``
    strings and SQLite ``[...]`` and backtick identifiers. Raises ``ParamSyntaxError`` for a
    positional placeholder (``$1`` on PostgreSQL, ``?`` on SQLite).
    """
    pg = dialect == "postgresql"
    found: list[tuple[int, int, str]] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        prev = sql[i - 1] if i else ""
        if c == "'":
            escaped = pg and prev in ("e", "E") and (i < 2 or not _is_word(sql[i - 2]))
            i = _skip_quoted(sql, i, "'", backslash=escaped)
        elif c == '"' or (not pg and c == "`"):
            i = _skip_quoted(sql, i, c)
        elif not pg and c == "[":
            end = sql.find("]", i + 1)
            i = n if end < 0 else end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, nested=pg)
        elif pg and c == "$" and not _is_word(prev):
            if i + 1 < n and sql[i + 1].isdigit():
                raise ParamSyntaxError(f"positional parameter at offset {i}: use :name placeholders")
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:
                i += 1
            else:
                end = sql.find(tag.group(), tag.end())
                i = n if end < 0 else end + len(tag.group())
        elif not pg and c == "?":
            raise ParamSyntaxError(f"positional parameter at offset {i}: use :name placeholders")
        elif c == ":":
            if sql.startswith("::", i):
                i += 2
                continue
            name = _NAME.match(sql, i + 1)
            if name is not None and prev != ":" and not _is_word(prev):
                found.append((i, name.end(), name.group()))
                i = name.end()
            else:
                i += 1
        else:
            i += 1
    return found


def param_names(sql: str, dialect: Dialect) -> tuple[str, ...]:
    """Names of the placeholders, each once, in order of first use."""
    return tuple(dict.fromkeys(name for _, _, name in placeholders(sql, dialect)))


def to_postgres(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with ``:name`` rewritten to ``$n`` (a repeated name keeps its number), and the
    names in ``$n`` order."""
    numbers: dict[str, int] = {}
    parts: list[str] = []
    last = 0
    for start, end, name in placeholders(sql, "postgresql"):
        number = numbers.setdefault(name, len(numbers) + 1)
        parts.append(sql[last:start])
        parts.append(f"${number}")
        last = end
    parts.append(sql[last:])
    return "".join(parts), tuple(numbers)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def to_json(value: Any) -> Any:
    """A database value as a JSON value (see the module docstring for the choices)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return _float(float(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, PgRange):
        bounds = {"lower": value.lower, "upper": value.upper}
        flags = {"lower_inc": value.lower_inc, "upper_inc": value.upper_inc, "empty": value.isempty}
        return {**to_json(bounds), **flags}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if hasattr(value, "items") and hasattr(value, "keys"):  # asyncpg.Record of a composite type
        return {str(k): to_json(v) for k, v in value.items()}
    return str(value)


class DbNode:
    """Runs one statement; see the module docstring.

    Failure classes: an unreachable database is ``connection`` (retryable; waiting for a free
    pooled connection counts against the node's timeout); the statement timeout is ``timeout``
    (the engine's own timeout around the attempt says ``timeout`` too); a serialization failure or deadlock
    (and SQLite's ``database is locked``) is ``connection`` (retryable: nothing was committed);
    syntax errors, constraint violations, bad parameter values and missing parameters are
    ``validation`` (not retryable), with the database's own message.

    A write attempted under ``read_only`` is ``validation``, not ``code_error``: whether the
    statement writes is fixed by the node's config (its query and its ``read_only`` flag), not
    by the data it runs on, so it is the same kind of failure as a syntax error: the node is
    configured wrong, no attempt can succeed, and retrying must not happen. For the same reason a
    statement SQLite's authorizer refuses (``ATTACH``, a temporary object, an unlisted pragma:
    see ``db_sqlite_policy``) is ``validation``. Connections are shared by runs, so no run
    leaves state on one: see ``db_sqlite.SqliteDatabase`` and ``db_postgres._reset_connection``.
    """

    type_name: ClassVar[str] = "db"
    dispatch: ClassVar[Dispatch] = Dispatch.TASK
    reads_data: ClassVar[bool] = False
    """``execute`` reads its config only (the input mapping computed it), so its task need not
    carry every node output of the run (``runtime.step``, ADR 0039)."""

    def __init__(
        self,
        databases: Mapping[str, str],
        *,
        default_timeout_seconds: float = 30.0,
        pool_max_size: int = 10,
    ) -> None:
        """``databases`` is name -> URL; a URL of an unknown kind raises ``ValueError`` here."""
        self.default_timeout_seconds = default_timeout_seconds
        self._databases = Databases(databases, pool_max_size=pool_max_size)

    def validate(self, config: dict[str, Any]) -> None:
        unknown = set(config) - FIELDS
        if unknown:
            field = sorted(unknown)[0]
            if field == "timeout_seconds":
                raise ConfigError(field, "set timeout_seconds on the node, beside its config")
            raise ConfigError(field, "unknown field")
        connection = config.get("connection")
        dialects = self._databases.dialects
        if not isinstance(connection, str) or connection not in dialects:
            known = ", ".join(self._databases.names()) or "none (LINKFLOW_DATABASES is empty)"
            raise ConfigError("connection", f"unknown connection {connection!r}; known: {known}")
        dialect = dialects[connection]
        query = config.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("query", "a non-empty SQL string is required")
        try:
            names = param_names(query, dialect)
        except ParamSyntaxError as exc:
            raise ConfigError("query", str(exc)) from exc
        params = config.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError("params", "must be an object of parameter name -> value")
        if dialect == "sqlite":
            for key, value in params.items():
                if not (value is None or isinstance(value, str | float | bool)) and not (
                    isinstance(value, int) and value in SQLITE_INT
                ):
                    raise ConfigError(
                        "params", f"{key!r}: SQLite binds strings, numbers (64-bit integers), booleans, null"
                    )
        if not isinstance(config.get("read_only", True), bool):
            raise ConfigError("read_only", "must be true or false")
        max_rows = config.get("max_rows", DEFAULT_MAX_ROWS)
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise ConfigError("max_rows", f"must be an integer from 1 to {MAX_ROWS_LIMIT}")
        circuit.check_config(config)  # the executor's breaker reads it (runtime/breakers.py)
        missing = [name for name in names if name not in params]
        if missing:
            raise ConfigError("params", f"the query uses :{missing[0]} but params has no {missing[0]!r}")

    async def execute(self, ctx: NodeContext, config: dict[str, Any], data: dict[str, Any]) -> Any:
        # Again at run time: keys computed by the node's input mapping were not seen at registration.
        try:
            self.validate(config)
        except ConfigError as exc:
            raise NodeFailure("validation", exc.message) from exc
        name = config["connection"]
        sql: str = config["query"]
        if self._databases.dialects[name] == "postgresql":
            sql, order = to_postgres(sql)
        else:
            order = param_names(sql, "sqlite")
        query = Query(
            sql=sql,
            params=config.get("params", {}),
            order=order,
            read_only=config.get("read_only", True),
            max_rows=config.get("max_rows", DEFAULT_MAX_ROWS),
            timeout_seconds=ctx.timeout_seconds,
        )
        db = self._databases.get(name)
        return _output(await db.run(query))

    async def close(self) -> None:
        """Close every pool and connection; the node opens them again if used afterwards."""
        await self._databases.close()


def _output(result: QueryResult) -> dict[str, Any]:
    rows = [dict(zip(result.columns, map(to_json, row), strict=True)) for row in result.rows]
    return {"rows": rows, "row_count": len(rows), "columns": result.columns, "truncated": result.truncated}
