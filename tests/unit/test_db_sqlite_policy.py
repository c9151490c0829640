"""The SQLite statement policy without a database: the URI of the read-only connection and the
authorizer's answers (the real-file behaviour is in tests/integration/test_db_node.py)."""

from __future__ import annotations

import sqlite3

import pytest

from linkflow_stream.nodes.db_sqlite import read_only_uri
from linkflow_stream.nodes.db_sqlite_policy import StatementAuthorizer, refusal


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/d/a.db?mode=rw", "file:/d/a.db?mode=ro"),
        ("file:/d/a.db?mode=rwc&cache=private", "file:/d/a.db?cache=private&mode=ro"),
        ("file:/d/a.db?immutable=1&mode=rw&vfs=unix", "file:/d/a.db?immutable=1&vfs=unix&mode=ro"),
    ],
)
def test_the_read_only_connection_opens_the_same_file_with_mode_ro(uri: str, expected: str) -> None:
    """Whatever mode the URL asks for (rwc creates the file), read-only runs never open it writable."""
    assert read_only_uri(uri) == expected


@pytest.mark.parametrize("read_only", [True, False])
def test_attach_detach_and_temporary_objects_are_refused_for_every_run(read_only: bool) -> None:
    assert refusal(sqlite3.SQLITE_ATTACH, "file:/x?mode=rwc", None, None, read_only=read_only)
    assert refusal(sqlite3.SQLITE_DETACH, "x", None, None, read_only=read_only)
    assert refusal(sqlite3.SQLITE_CREATE_VIEW, "v", None, "temp", read_only=read_only)
    assert refusal(sqlite3.SQLITE_CREATE_TEMP_TRIGGER, "t", "people", "temp", read_only=read_only)
    assert refusal(sqlite3.SQLITE_CREATE_TABLE, "t", None, "main", read_only=read_only) is None


@pytest.mark.parametrize(
    ("name", "value", "read_only", "allowed"),
    [
        ("table_info", "people", True, True),
        ("TABLE_INFO", "people", True, True),
        ("user_version", None, True, True),
        ("user_version", "3", True, False),
        ("user_version", "3", False, True),
        ("foreign_keys", None, True, True),
        ("foreign_keys", "1", False, False),
        ("query_only", "0", True, False),
        ("query_only", None, True, False),
        ("optimize", None, False, False),
        ("wal_checkpoint", None, False, False),
    ],
)
def test_pragmas_are_allowed_only_when_listed(
    name: str, value: str | None, read_only: bool, allowed: bool
) -> None:
    reason = refusal(sqlite3.SQLITE_PRAGMA, name, value, None, read_only=read_only)
    assert (reason is None) == allowed, reason


def test_the_authorizer_keeps_the_first_reason() -> None:
    """SQLite only says "not authorized"; the node's message names what was refused."""
    authorizer = StatementAuthorizer(read_only=True)
    assert authorizer(sqlite3.SQLITE_SELECT, None, None, None, None) == sqlite3.SQLITE_OK
    assert authorizer(sqlite3.SQLITE_ATTACH, "x.db", None, None, None) == sqlite3.SQLITE_DENY
    assert authorizer(sqlite3.SQLITE_PRAGMA, "journal_mode", "off", None, None) == sqlite3.SQLITE_DENY
    assert authorizer.refused is not None and authorizer.refused.startswith("ATTACH is refused")
