"""The ``db`` node against real databases: a SQLite file in tmp_path and a throwaway PostgreSQL.

Each test that takes ``db`` runs on both. The PostgreSQL cases are skipped when PostgreSQL is not
installed, unless ``LINKFLOW_REQUIRE_POSTGRES`` is set (see tests/postgres.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linkflow_stream.core.node_contract import NodeContext, NodeFailure
from linkflow_stream.nodes.db import DbNode
from tests.postgres import PostgresCluster, free_port, postgres_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    yield from postgres_cluster()


@dataclass
class Db:
    """A ``DbNode`` with one connection, ``main``, and shorthands to run it."""

    dialect: str
    node: DbNode

    async def run(
        self,
        query: str,
        params: dict[str, Any] | None = None,
        *,
        timeout_seconds: float = 10.0,
        **config: Any,
    ) -> Any:
        full = {"connection": "main", "query": query, **config}
        if params is not None:
            full["params"] = params
        self.node.validate(full)
        return await self.node.execute(NodeContext("e1", "wf1", "db1", 1, timeout_seconds), full, {})

    async def write(self, query: str, params: dict[str, Any] | None = None, **config: Any) -> Any:
        return await self.run(query, params, read_only=False, **config)

    async def fail(self, query: str, params: dict[str, Any] | None = None, **config: Any) -> NodeFailure:
        with pytest.raises(NodeFailure) as info:
            await self.run(query, params, **config)
        return info.value


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        sqlite3.connect(path).close()
        url = f"sqlite:///{path}"
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.fresh_url()
    node = DbNode({"main": url})
    try:
        yield Db(request.param, node)
    finally:
        await node.close()


async def people(db: Db) -> None:
    await db.write("create table people (id integer primary key, name text not null, score real)")
    for i, name in enumerate(["ada", "grace", "edsger", "barbara", "donald"], start=1):
        out = await db.write(
            "insert into people (id, name, score) values (:id, :name, :score)",
            {"id": i, "name": name, "score": i * 1.5},
        )
        assert out == {"rows": [], "row_count": 0, "columns": [], "truncated": False}


async def test_select_with_bound_params(db: Db) -> None:
    await people(db)
    out = await db.run(
        "select id, name from people where id = :id or (name = :name and id <> :id) order by id",
        {"id": 2, "name": "donald"},
    )
    assert out == {
        "rows": [{"id": 2, "name": "grace"}, {"id": 5, "name": "donald"}],
        "row_count": 2,
        "columns": ["id", "name"],
        "truncated": False,
    }
    out = await db.run("select count(*) as n from people where name like :p", {"p": "%a%"})
    assert out["rows"] == [{"n": 4}]


async def test_an_injection_attempt_stays_data(db: Db) -> None:
    await people(db)
    evil = "x'); drop table people; --"
    out = await db.run("select :v as v, count(*) as n from people where name = :v", {"v": evil})
    assert out["rows"] == [{"v": evil, "n": 0}]
    out = await db.run("select count(*) as n from people where name = :v", {"v": "' or '1'='1"})
    assert out["rows"] == [{"n": 0}]
    await db.write("insert into people (id, name) values (:id, :name)", {"id": 99, "name": evil})
    out = await db.run("select name from people where id = 99")
    assert out["rows"] == [{"name": evil}]
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 6}], "table still there"


async def test_read_only_blocks_a_write(db: Db) -> None:
    await people(db)
    for sql in ("insert into people (id, name) values (42, 'mallory')", "delete from people"):
        err = await db.fail(sql)
        assert (err.error_type, err.retryable) == ("validation", False)
        assert "read" in err.message.lower()
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 5}]
    # read_only is per statement: the same connection still writes when asked to.
    await db.write("delete from people where id = 5")
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 4}]


async def test_max_rows_truncates(db: Db) -> None:
    await people(db)
    out = await db.run("select id from people order by id", max_rows=3)
    assert out == {
        "rows": [{"id": 1}, {"id": 2}, {"id": 3}],
        "row_count": 3,
        "columns": ["id"],
        "truncated": True,
    }
    out = await db.run("select id from people order by id", max_rows=5)
    assert (out["row_count"], out["truncated"]) == (5, False)
    out = await db.run("select id from people where id > 100")
    assert out == {"rows": [], "row_count": 0, "columns": ["id"], "truncated": False}


async def test_writes_return_rows_with_returning_and_commit(db: Db) -> None:
    await people(db)
    out = await db.write(
        "update people set score = score + :d where id <= 3 returning id, score", {"d": 1}, max_rows=2
    )
    assert (out["row_count"], out["truncated"]) == (2, True)
    out = await db.run("select sum(score) as s from people where id <= 3")
    assert out["rows"] == [{"s": 1.5 + 3.0 + 4.5 + 3}], "all three rows were updated and committed"


async def test_a_failed_write_is_rolled_back(db: Db) -> None:
    await people(db)
    err = await db.fail(
        "insert into people (id, name) values (:a, 'new'), (:b, 'dup')", {"a": 50, "b": 1}, read_only=False
    )
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "unique" in err.message.lower() or "duplicate" in err.message.lower()
    assert (await db.run("select count(*) as n from people where id = 50"))["rows"] == [{"n": 0}]


async def test_syntax_error_is_validation_with_the_database_message(db: Db) -> None:
    err = await db.fail("selec 1")
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "syntax error" in err.message
    err = await db.fail("select * from no_such_table")
    assert err.error_type == "validation"
    assert "no_such_table" in err.message


async def test_more_than_one_statement_is_refused(db: Db) -> None:
    await people(db)
    err = await db.fail("select 1; delete from people", read_only=False)
    assert (err.error_type, err.retryable) == ("validation", False)
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 5}]


async def test_duplicate_column_names_fail_before_anything_is_committed(db: Db) -> None:
    err = await db.fail("select 1 as a, 2 as a")
    assert err.error_type == "validation"
    assert "more than one column named a" in err.message
    await people(db)
    err = await db.fail("delete from people returning id, id", read_only=False)
    assert "more than one column named id" in err.message
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 5}]


async def test_statement_timeout(db: Db) -> None:
    sql = (
        "select pg_sleep(10)"
        if db.dialect == "postgresql"
        else "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
    )
    started = time.monotonic()
    err = await db.fail(sql, timeout_seconds=0.5)
    assert time.monotonic() - started < 5
    assert (err.error_type, err.retryable) == ("timeout", True)
    assert (await db.run("select 1 as one"))["rows"] == [{"one": 1}], "the connection is usable again"


async def test_a_timeout_in_the_middle_of_the_rows_leaves_the_connection_clean(db: Db) -> None:
    """The first row comes at once, the second never: the statement stops half-read."""
    sql = (
        "select n, pg_sleep(case when n = 1 then 0 else 10 end)::text as s from generate_series(1, 3) n"
        if db.dialect == "postgresql"
        else "with recursive c(n) as (select 1 union all select n + 1 from c)"
        " select n from c where n = 1 or n = 1000000000000"
    )
    err = await db.fail(sql, timeout_seconds=0.5)
    assert (err.error_type, err.retryable) == ("timeout", True)
    await people(db)  # writes and commits on the same connection
    assert (await db.run("select count(*) as n from people"))["rows"] == [{"n": 5}]


async def test_a_cancelled_statement_frees_the_connection(db: Db) -> None:
    """The engine cancels an attempt (timeout, workflow cancel): the database stops working on it."""
    sql = (
        "select pg_sleep(30)"
        if db.dialect == "postgresql"
        else "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
    )
    task = asyncio.create_task(db.run(sql, timeout_seconds=30))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        assert (await db.run("select 2 as two"))["rows"] == [{"two": 2}]
    if db.dialect == "postgresql":  # the server stopped sleeping too; the pool did not just move on
        sleeping = (
            "select count(*) as n from pg_stat_activity"
            " where state = 'active' and query = 'select pg_sleep(30)'"
        )
        for _ in range(100):
            if (await db.run(sleeping))["rows"] == [{"n": 0}]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("pg_sleep still runs on the server 5s after the attempt was cancelled")


async def test_concurrent_statements(db: Db) -> None:
    await people(db)
    outs = await asyncio.gather(
        *(db.run("select name from people where id = :id", {"id": 1 + i % 5}) for i in range(30))
    )
    assert [o["rows"][0]["name"] for o in outs[:5]] == ["ada", "grace", "edsger", "barbara", "donald"]


async def test_sqlite_types(tmp_path: Path) -> None:
    path = tmp_path / "types.db"
    sqlite3.connect(path).close()
    db = Db("sqlite", DbNode({"main": f"sqlite:///{path}"}))
    try:
        out = await db.run(
            "select 1 as i, 1.5 as f, 'x' as s, null as n, x'00ff' as b, 1e999 as inf, :t as t, :big as big",
            {"t": True, "big": 2**62},
        )
        assert out["rows"] == [
            {"i": 1, "f": 1.5, "s": "x", "n": None, "b": "AP8=", "inf": "Infinity", "t": 1, "big": 2**62}
        ]
    finally:
        await db.node.close()


async def test_sqlite_missing_file_is_a_connection_failure(tmp_path: Path) -> None:
    node = DbNode({"main": f"sqlite:///{tmp_path}/absent.db"})
    try:
        with pytest.raises(NodeFailure) as info:
            await node.execute(
                NodeContext("e1", "wf1", "db1", 1, 5.0), {"connection": "main", "query": "select 1"}, {}
            )
        assert (info.value.error_type, info.value.retryable) == ("connection", True)
        assert not (tmp_path / "absent.db").exists(), "never created"
    finally:
        await node.close()


async def test_sqlite_locked_database_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    sqlite3.connect(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("create table t (x)")
    other.execute("begin exclusive")
    db = Db("sqlite", DbNode({"main": f"sqlite:///{path}"}))
    try:
        err = await db.fail("select * from t", timeout_seconds=0.3)
        assert (err.error_type, err.retryable) == ("connection", True)
        assert "SQLITE_BUSY" in err.message
    finally:
        other.close()
        await db.node.close()


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[Db]:
    """A SQLite file with the five people in it."""
    path = tmp_path / "lite.db"
    sqlite3.connect(path).close()
    db = Db("sqlite", DbNode({"main": f"sqlite:///{path}"}))
    await people(db)
    try:
        yield db
    finally:
        await db.node.close()


async def attached(db: Db) -> list[str]:
    """Names of the databases the writing connection has open beside ``main`` and ``temp``."""
    out = await db.write("select name from pragma_database_list order by seq")
    return [r["name"] for r in out["rows"] if r["name"] not in ("main", "temp")]


@pytest.mark.parametrize("read_only", [True, False])
async def test_sqlite_attach_is_refused_and_creates_no_file(
    lite: Db, tmp_path: Path, read_only: bool
) -> None:
    """``query_only`` does not stop ``ATTACH``: it used to create any file the worker could write,
    and the attachment stayed on the shared connection for later (writing) runs. Refused for every
    run: a workflow reaches only its configured database file."""
    evil = tmp_path / "evil.db"
    err = await lite.fail(f"attach 'file:{evil}?mode=rwc' as x", read_only=read_only)
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "ATTACH is refused" in err.message
    assert not evil.exists(), "the ATTACH created a file"
    assert await attached(lite) == [], "a later writing run sees an attachment"
    err = await lite.fail("detach main", read_only=read_only)
    assert "DETACH is refused" in err.message


@pytest.mark.parametrize(
    "pragma",
    [
        "PRAGMA query_only = OFF",
        "PRAGMA user_version = 7",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_mode = OFF",
        "PRAGMA writable_schema = ON",
        "select * from pragma_query_only",
    ],
)
async def test_sqlite_pragmas_that_change_anything_are_refused_under_read_only(lite: Db, pragma: str) -> None:
    """A read_only run reads: no pragma of it may change the connection or the file."""
    err = await lite.fail(pragma)
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "is refused" in err.message and "PRAGMA" in err.message, err.message
    assert (await lite.write("PRAGMA user_version"))["rows"] == [{"user_version": 0}]
    assert "read" in (await lite.fail("delete from people")).message, "the run is still read-only"
    assert (await lite.run("select count(*) as n from people"))["rows"] == [{"n": 5}]


async def test_sqlite_pragmas_a_run_may_use(lite: Db) -> None:
    """Reading pragmas work in any run; a writing run may set ``user_version`` (data in the file,
    for migrations) but not a pragma that would stay on the shared connection."""
    out = await lite.run("select name from pragma_table_info('people') order by cid")
    assert [r["name"] for r in out["rows"]] == ["id", "name", "score"]
    assert (await lite.run("PRAGMA table_info(people)"))["row_count"] == 3
    await lite.write("PRAGMA user_version = 7")
    assert (await lite.run("PRAGMA user_version"))["rows"] == [{"user_version": 7}]
    err = await lite.fail("PRAGMA foreign_keys = ON", read_only=False)
    assert (err.error_type, err.retryable) == ("validation", False)
    assert (await lite.write("PRAGMA foreign_keys"))["rows"] == [{"foreign_keys": 0}]


async def test_sqlite_a_statement_the_engine_ran_before_is_still_checked(lite: Db) -> None:
    """sqlite3 caches statements by their text and the engine runs ``PRAGMA busy_timeout = <ms>``
    itself before every run: the same text as a run's query must still meet the authorizer."""
    err = await lite.fail("PRAGMA busy_timeout = 10000", read_only=False)
    assert "PRAGMA busy_timeout = 10000 is refused" in err.message


@pytest.mark.parametrize(
    "create",
    [
        "create temp view people as select 'shadow' as name",
        "create view temp.people as select 'shadow' as name",
        "create temp table people (name text)",
        "create temp trigger spy after insert on main.people begin select 1; end",
    ],
)
async def test_sqlite_temporary_objects_are_refused(lite: Db, create: str) -> None:
    """A temporary object lives on the connection that later runs share: a temp view named like a
    table would answer every later run's reads of that table."""
    err = await lite.fail(create, read_only=False)
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "temporary object" in err.message
    out = await lite.write("select name from people where id = 1")
    assert out["rows"] == [{"name": "ada"}]
    assert (await lite.write("select count(*) as n from sqlite_temp_master"))["rows"] == [{"n": 0}]


async def test_sqlite_read_only_runs_do_not_see_the_writing_connection(lite: Db) -> None:
    """Read-only runs have a connection of their own: what a writing run leaves on its connection
    (the last rowid) is not visible to them."""
    await lite.write("insert into people (id, name) values (77, 'grace')")
    assert (await lite.write("select last_insert_rowid() as r"))["rows"] == [{"r": 77}]
    assert (await lite.run("select last_insert_rowid() as r"))["rows"] == [{"r": 0}]


CRASHING_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("pragma cache_size = 10")  # a small cache spills the change into the file early
conn.execute("begin")
conn.execute("update filler set x = -1")
print("writing", flush=True)
time.sleep(60)
"""


def crash_in_the_middle_of_a_write(path: Path) -> None:
    """Fill ``path`` and let another process die while it rewrites every row."""
    with sqlite3.connect(path) as conn:
        conn.execute("create table filler (x integer)")
        conn.executemany("insert into filler values (?)", [(i,) for i in range(20_000)])
    conn.close()
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path)], stdout=subprocess.PIPE
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        finally:
            writer.kill()


async def test_sqlite_a_read_only_run_after_a_writer_crashed(tmp_path: Path) -> None:
    """A process killed in the middle of a write leaves a hot journal, which a ``mode=ro``
    connection may not roll back (SQLITE_READONLY_ROLLBACK). The read-only run must still read
    the committed data, not fail as a write under read_only."""
    path = tmp_path / "crash.db"
    crash_in_the_middle_of_a_write(path)
    assert (tmp_path / "crash.db-journal").exists(), "no hot journal: the test proves nothing"
    db = Db("sqlite", DbNode({"main": f"sqlite:///{path}"}))
    try:
        out = await db.run("select count(*) as n, sum(x) as total from filler")
        assert out["rows"] == [{"n": 20_000, "total": sum(range(20_000))}]
    finally:
        await db.node.close()


async def test_sqlite_memory_databases_are_refused() -> None:
    """Read-only and writing runs use two connections, and each would see its own empty database."""
    with pytest.raises(ValueError, match="'scratch': mode=memory is not supported"):
        DbNode({"scratch": "sqlite:///scratch.db?mode=memory"})


@pytest.fixture
async def pg(postgres: PostgresCluster) -> AsyncIterator[Db]:
    node = DbNode({"main": postgres.fresh_url()})
    try:
        yield Db("postgresql", node)
    finally:
        await node.close()


async def test_postgres_types(pg: Db) -> None:
    await pg.write("create type pair as (n int, s text)")
    out = await pg.run(
        """
        select 12.34::numeric as num, 'NaN'::float8 as nan, 7::int8 as big, true as yes, 'txt' as t,
               '2024-01-02T03:04:05Z'::timestamptz as ts, '2024-01-02 03:04:05'::timestamp as local,
               '2024-01-02'::date as d, '03:04:05'::time as tm, '90 seconds'::interval as iv,
               '\\x00ff'::bytea as b, '12345678-1234-5678-1234-567812345678'::uuid as u,
               '{"a": [1, 2.5, null]}'::jsonb as doc, '[1]'::json as arr_json, array[1, 2] as arr,
               array[[1.5, 2]]::numeric[] as grid, '10.0.0.1'::inet as ip, null::text as nothing,
               '[1,5)'::int4range as r, 'empty'::daterange as no_days, (1, 'a')::record as rec,
               (2, 'b')::pair as pair
        """
    )
    assert out["rows"] == [
        {
            "num": 12.34,
            "nan": "NaN",
            "big": 7,
            "yes": True,
            "t": "txt",
            "ts": "2024-01-02T03:04:05+00:00",
            "local": "2024-01-02T03:04:05",
            "d": "2024-01-02",
            "tm": "03:04:05",
            "iv": 90.0,
            "b": "AP8=",
            "u": "12345678-1234-5678-1234-567812345678",
            "doc": {"a": [1, 2.5, None]},
            "arr_json": [1],
            "arr": [1, 2],
            "grid": [[1.5, 2.0]],
            "ip": "10.0.0.1",
            "nothing": None,
            "r": {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False, "empty": False},
            "no_days": {"lower": None, "upper": None, "lower_inc": False, "upper_inc": False, "empty": True},
            "rec": [1, "a"],  # an anonymous record has no field names
            "pair": {"n": 2, "s": "b"},
        }
    ]


async def test_postgres_json_params_bind_to_column_types(pg: Db) -> None:
    """JSON has no dates, decimals or bytes: strings and numbers bind to those types."""
    out = await pg.run(
        """
        select :ts::timestamptz + interval '1 day' as ts, :d::date as d, :amount::numeric = 0.1 as exact,
               :doc::jsonb -> 'a' as a, :raw::bytea as raw, :secs::interval as iv, :u::uuid as u,
               :n::int + 1 as n, :t::time as t, :many::int[] as many,
               :naive::timestamptz as naive, :local::timestamp as local
        """,
        {
            "ts": "2024-01-01T00:00:00+00:00",
            "d": "2024-02-29",
            "amount": 0.1,
            "doc": {"a": [1, "x"]},
            "raw": "AP8=",
            "secs": 1.5,
            "u": "12345678-1234-5678-1234-567812345678",
            "n": 41,
            "t": "12:30:00",
            "many": [1, 2, 3],
            "naive": "2024-01-01T12:00:00",
            "local": "2024-01-01T12:00:00+02:00",
        },
    )
    assert out["rows"] == [
        {
            "ts": "2024-01-02T00:00:00+00:00",
            "d": "2024-02-29",
            "exact": True,
            "a": [1, "x"],
            "raw": "AP8=",
            "iv": 1.5,
            "u": "12345678-1234-5678-1234-567812345678",
            "n": 42,
            "t": "12:30:00",
            "many": [1, 2, 3],
            "naive": "2024-01-01T12:00:00+00:00",  # a timestamptz without offset is UTC
            "local": "2024-01-01T12:00:00",  # timestamp ignores the offset, as PostgreSQL does
        }
    ]


async def test_postgres_bad_param_values_are_validation(pg: Db) -> None:
    err = await pg.fail("select :d::date", {"d": "not a date"})
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "params.d" in err.message
    err = await pg.fail("select :n::int", {"n": "forty-two"})
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "22000" in err.message and "parameter :n" in err.message, err.message


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_postgres_serialization_failure_and_deadlock_are_retryable(pg: Db, sqlstate: str) -> None:
    err = await pg.fail(
        f"do $$ begin raise exception 'conflict :x' using errcode = '{sqlstate}'; end $$", read_only=False
    )
    assert (err.error_type, err.retryable) == ("connection", True)
    assert sqlstate in err.message


async def test_postgres_read_only_is_a_read_only_transaction(pg: Db) -> None:
    err = await pg.fail("create table t (x int)")
    assert (err.error_type, err.retryable) == ("validation", False)
    assert "25006" in err.message and "read_only" in err.message
    # A function that writes is caught too, not only statements that look like writes.
    await pg.write("create table t (x int)")
    await pg.write(
        "create function sneaky() returns int language sql as 'insert into t values (1) returning x'"
    )
    err = await pg.fail("select sneaky()")
    assert err.error_type == "validation"
    assert (await pg.run("select count(*) as n from t"))["rows"] == [{"n": 0}]


async def test_postgres_settings_do_not_leak_between_statements(pg: Db) -> None:
    await pg.write("set statement_timeout = 0")
    err = await pg.fail("select pg_sleep(5)", timeout_seconds=0.3)
    assert err.error_type == "timeout"


SESSION_PROBE = """
    select pg_backend_pid() as pid, current_user as role, session_user as session_role,
           current_setting('work_mem') as work_mem, current_setting('search_path') as search_path,
           coalesce(current_setting('linkflow.probe', true), '') as custom,
           to_regclass('pg_temp.leak')::text as temp_table,
           (select count(*) from pg_prepared_statements where name = 'leak') as prepared
"""


async def test_postgres_session_changes_do_not_reach_the_next_run(postgres: PostgresCluster) -> None:
    """One pool serves every run on the worker: what a run changes on its session (a setting, the
    role, a temporary table, a prepared statement) must be gone before the next run gets the
    connection, or one workflow steers another's queries. The pool holds one connection, and the
    probe's backend pid shows the next run really had the same one."""
    role = f"r_{uuid.uuid4().hex[:12]}"
    db = Db("postgresql", DbNode({"main": postgres.fresh_url()}, pool_max_size=1))
    postgres.psql(f"create role {role}")
    try:
        before = (await db.run(SESSION_PROBE))["rows"][0]
        for change, read_only in [
            ("set work_mem = '77MB'", True),
            ("set session work_mem = '77MB'", True),
            ("set search_path = public", True),
            ("select set_config('linkflow.probe', 'leaked', false)", True),
            ("reset search_path", True),
            (f"set role {role}", True),
            (f"set session authorization {role}", True),
            ("prepare leak as select 1", True),
            ("create temp table leak (x int)", False),
        ]:
            await db.run(change, read_only=read_only)
            assert (await db.run(SESSION_PROBE))["rows"][0] == before, f"{change!r} reached the next run"
    finally:
        await db.node.close()
        postgres.psql(f"drop role {role}")


async def test_postgres_connection_refused() -> None:
    node = DbNode({"down": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"})
    try:
        with pytest.raises(NodeFailure) as info:
            await node.execute(
                NodeContext("e1", "wf1", "db1", 1, 5.0), {"connection": "down", "query": "select 1"}, {}
            )
        assert (info.value.error_type, info.value.retryable) == ("connection", True)
        assert "'down'" in info.value.message
    finally:
        await node.close()


async def test_postgres_unknown_database_is_not_retryable(postgres: PostgresCluster) -> None:
    node = DbNode({"main": postgres.url("no_such_database")})
    try:
        with pytest.raises(NodeFailure) as info:
            await node.execute(
                NodeContext("e1", "wf1", "db1", 1, 5.0), {"connection": "main", "query": "select 1"}, {}
            )
        assert (info.value.error_type, info.value.retryable) == ("connection", False)
        assert "3D000" in info.value.message
    finally:
        await node.close()
