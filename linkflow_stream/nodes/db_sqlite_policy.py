"""What one ``db`` statement may do on SQLite, enforced by SQLite's authorizer.

SQLite asks the authorizer (``sqlite3.Connection.set_authorizer``) about every action while it
compiles a statement, whatever the SQL looks like, so nothing here parses SQL. A connection
serves every run of its database on the worker, so the rule is: a statement reaches nothing
outside the configured file, and leaves nothing on the connection for the runs after it.

* ``ATTACH`` and ``DETACH`` are refused for every run. An attached file is outside the
  configured database (``ATTACH 'file:/any/path?mode=rwc' AS x`` creates one), and an
  attachment stays on the connection for later runs.
* Temporary tables, views, indexes and triggers are refused for every run: they live on the
  connection, not in the file, and a temp view or trigger named like a table would shadow or
  watch that table for every later run.
* A ``PRAGMA`` runs only if listed here: the ones that only read (``table_info``,
  ``user_version``, ...) in every run, and setting ``user_version`` (a number stored in the file,
  which migrations use) in writing runs. Every other pragma changes the connection for later
  runs (``foreign_keys``, ``query_only``, ``synchronous``) or the file's format
  (``journal_mode``, ``page_size``, ``writable_schema``), which is for whoever runs the
  database to set, not for a workflow.
"""

from __future__ import annotations

import sqlite3

INTROSPECTION_PRAGMAS = frozenset(
    {
        "collation_list",
        "database_list",
        "foreign_key_check",
        "foreign_key_list",
        "function_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "module_list",
        "pragma_list",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
"""Pragmas that only read; their argument, if any, names a table or index or limits a check."""

READABLE_SETTINGS = frozenset(
    {
        "application_id",
        "auto_vacuum",
        "data_version",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "journal_mode",
        "page_count",
        "page_size",
        "schema_version",
        "user_version",
    }
)
"""Pragmas that read a setting when given no value (and change it when given one)."""

WRITABLE_SETTINGS = frozenset({"user_version"})
"""Settings a writing run may change: stored in the file as data, not kept on the connection."""

_CREATES = frozenset(
    {
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_CREATE_VTABLE,
    }
)


def refusal(
    action: int, arg1: str | None, arg2: str | None, db_name: str | None, *, read_only: bool
) -> str | None:
    """Why a statement may not take ``action`` (the authorizer's arguments), or None if it may."""
    if action == sqlite3.SQLITE_ATTACH:
        return "ATTACH is refused: a workflow reaches only its configured database file"
    if action == sqlite3.SQLITE_DETACH:
        return "DETACH is refused: a workflow reaches only its configured database file"
    if action in _CREATES and db_name == "temp":
        return (
            f"creating the temporary object {arg1} is refused: it would stay on the connection "
            "that later runs share"
        )
    if action == sqlite3.SQLITE_PRAGMA:
        return _pragma_refusal((arg1 or "").lower(), arg2, read_only=read_only)
    return None


def _pragma_refusal(name: str, value: str | None, *, read_only: bool) -> str | None:
    if name in INTROSPECTION_PRAGMAS:
        return None
    if name in READABLE_SETTINGS and value is None:
        return None
    if name in WRITABLE_SETTINGS and not read_only:
        return None
    shown = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {value}"
    if name in WRITABLE_SETTINGS:
        return f"{shown} is refused: the node is read_only"
    return (
        f"{shown} is refused: a run may read table_info, user_version and the like, and a "
        "writing run may set user_version; other pragmas change the shared connection or the file"
    )


class StatementAuthorizer:
    """The authorizer for one statement; ``refused`` keeps the first reason it denied an action,
    for the node's error message (SQLite itself only says ``not authorized``)."""

    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only
        self.refused: str | None = None

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None
    ) -> int:
        reason = refusal(action, arg1, arg2, db_name, read_only=self.read_only)
        if reason is None:
            return sqlite3.SQLITE_OK
        self.refused = self.refused or reason
        return sqlite3.SQLITE_DENY
