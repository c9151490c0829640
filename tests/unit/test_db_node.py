"""The ``db`` node without a database: placeholder translation, config validation, JSON values."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from linkflow_stream.core.node_contract import ConfigError, NodeContext, NodeFailure
from linkflow_stream.nodes.db import DbNode, ParamSyntaxError, param_names, to_json, to_postgres
from linkflow_stream.nodes.db_sqlite import sqlite_uri

DATABASES = {
    "main": "postgresql://app:s3cret@db.internal:5432/app",
    "local": "sqlite:////var/lib/linkflow/local.db",
}


@pytest.fixture
def node() -> DbNode:
    return DbNode(DATABASES)


def ok(**config: Any) -> dict[str, Any]:
    return {"connection": "main", "query": "select 1", **config}


# --- :name -> $n --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected", "names"),
    [
        ("select * from t where id = :id", "select * from t where id = $1", ("id",)),
        ("select :a, :b, :a", "select $1, $2, $1", ("a", "b")),
        ("select :b + :a where x = :b", "select $1 + $2 where x = $1", ("b", "a")),
        ("values (:x),(:y_2),(:Z)", "values ($1),($2),($3)", ("x", "y_2", "Z")),
        ("select :id::int", "select $1::int", ("id",)),
        ("select x::text, :v::numeric(10,2) from t", "select x::text, $1::numeric(10,2) from t", ("v",)),
        ("select cast(:v as int)", "select cast($1 as int)", ("v",)),
        ("select 'it''s :not' , :yes", "select 'it''s :not' , $1", ("yes",)),
        ("select ':a', '::b', '''', :c", "select ':a', '::b', '''', $1", ("c",)),
        ('select "col:name", "we""ird :x" from t where a = :a', None, ("a",)),
        ("select 1 -- where id = :id\n, :a", "select 1 -- where id = :id\n, $1", ("a",)),
        ("select 1 -- :trailing", "select 1 -- :trailing", ()),
        ("select /* :x */ :a", "select /* :x */ $1", ("a",)),
        ("select /* outer /* :inner */ :still_comment */ :a", None, ("a",)),
        ("select $$ :x $$, :a", "select $$ :x $$, $1", ("a",)),
        ("select $fn$ it's :x $$ $fn$, :a", "select $fn$ it's :x $$ $fn$, $1", ("a",)),
        ("select E'it\\'s :x', :a", "select E'it\\'s :x', $1", ("a",)),
        ("select 'a\\', :a", "select 'a\\', $1", ("a",)),
        ("select arr[1:2], arr[lo:hi], arr[:n]", "select arr[1:2], arr[lo:hi], arr[$1]", ("n",)),
        ("select f(a := 1), :b", "select f(a := 1), $1", ("b",)),
        ("select :naïve", "select $1", ("naïve",)),
        ("select foo$bar, :a", "select foo$bar, $1", ("a",)),
        ("select data ? 'k', :a", "select data ? 'k', $1", ("a",)),
        ("select 'unterminated :x", "select 'unterminated :x", ()),
        ("select 1", "select 1", ()),
    ],
)
def test_postgres_translation(sql: str, expected: str | None, names: tuple[str, ...]) -> None:
    translated, order = to_postgres(sql)
    assert order == names
    if expected is not None:
        assert translated == expected
    for number, name in enumerate(names, start=1):
        assert f"${number}" in translated, name


def test_postgres_translation_leaves_everything_else_byte_for_byte() -> None:
    sql = "select /* :c */ 'x:y', \"q:r\" -- :d\n from t where a = :a and b::text = :b::text"
    translated, order = to_postgres(sql)
    assert order == ("a", "b")
    assert translated == sql.replace("= :a", "= $1").replace("= :b", "= $2")


@pytest.mark.parametrize("sql", ["select $1", "select * from t where id = $2", "select :a, $1"])
def test_postgres_positional_placeholders_are_refused(sql: str) -> None:
    with pytest.raises(ParamSyntaxError, match="use :name"):
        to_postgres(sql)


def test_postgres_dollar_digits_inside_literals_are_fine() -> None:
    assert to_postgres("select '$1', \"$2\", $$ $3 $$ -- $4") == ("select '$1', \"$2\", $$ $3 $$ -- $4", ())


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("select * from t where id = :id and name = :name or id = :id", ("id", "name")),
        ("select [weird:col], `b:x`, ':s', \"d:q\" from t where a = :a", ("a",)),
        ("select 1 /* :x /* */ , :a", ("a",)),  # SQLite block comments do not nest
        ("select $x, @y, :z", ("z",)),  # SQLite's own $x/@y forms are bound by SQLite itself
        ("select '?' , \"?\", :a -- ?", ("a",)),
    ],
)
def test_sqlite_names(sql: str, names: tuple[str, ...]) -> None:
    assert param_names(sql, "sqlite") == names


def test_sqlite_question_mark_is_refused() -> None:
    with pytest.raises(ParamSyntaxError, match="use :name"):
        param_names("select * from t where id = ?", "sqlite")


def test_question_mark_is_an_operator_on_postgres() -> None:
    assert param_names("select doc ?| array['a'] from t where id = :id", "postgresql") == ("id",)


# --- validate ----------------------------------------------------------------------------------


def test_valid_configs_pass(node: DbNode) -> None:
    node.validate(ok())
    node.validate(
        ok(query="select * from t where id = :id", params={"id": 1}, read_only=False, max_rows=100_000)
    )
    node.validate({"connection": "local", "query": "select :a", "params": {"a": None}, "max_rows": 1})
    node.validate(ok(query="select :doc::jsonb", params={"doc": {"a": [1, 2]}}))


def reject(node: DbNode, config: dict[str, Any], field: str, match: str) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        node.validate(config)
    assert info.value.field == field
    assert str(info.value).startswith(f"config.{field}: ")
    return info.value


def test_unknown_field(node: DbNode) -> None:
    reject(node, ok(sql="select 1"), "sql", "unknown field")


def test_timeout_seconds_belongs_on_the_node(node: DbNode) -> None:
    reject(node, ok(timeout_seconds=5), "timeout_seconds", "on the node")


@pytest.mark.parametrize("connection", ["nope", None, 3, ""])
def test_unknown_connection_lists_the_known_names(node: DbNode, connection: Any) -> None:
    config = ok(connection=connection)
    if connection is None:
        del config["connection"]
    err = reject(node, config, "connection", "unknown connection")
    assert "known: local, main" in str(err)


def test_no_connections_configured() -> None:
    reject(DbNode({}), ok(), "connection", "LINKFLOW_DATABASES is empty")


@pytest.mark.parametrize("query", ["", "   \n", None, 42, ["select 1"]])
def test_query_must_be_a_non_empty_string(node: DbNode, query: Any) -> None:
    reject(node, ok(query=query), "query", "non-empty SQL string")


def test_positional_placeholders_name_the_query(node: DbNode) -> None:
    reject(node, ok(query="select $1", params={"1": 2}), "query", "use :name")
    reject(node, ok(connection="local", query="select ?"), "query", "use :name")


@pytest.mark.parametrize("params", [[1, 2], "id=1", 5, None])
def test_params_must_be_an_object(node: DbNode, params: Any) -> None:
    reject(node, ok(params=params), "params", "must be an object")


@pytest.mark.parametrize("value", [[1], {"a": 1}, 2**63, -(2**63) - 1])
def test_sqlite_params_must_be_scalars_it_can_bind(node: DbNode, value: Any) -> None:
    config = {"connection": "local", "query": "select :v", "params": {"v": value}}
    reject(node, config, "params", "'v': SQLite binds")


def test_missing_param_names_params(node: DbNode) -> None:
    config = ok(query="select * from t where a = :a and b = :b", params={"a": 1})
    reject(node, config, "params", "uses :b but params has no 'b'")
    # No params at all (e.g. computed by the input mapping at dispatch): still the field "params",
    # which registration ignores for a mapped key.
    reject(node, ok(query="select :a"), "params", "uses :a")


def test_names_in_literals_and_comments_need_no_param(node: DbNode) -> None:
    node.validate(ok(query="select ':a' -- :b\n/* :c */"))


@pytest.mark.parametrize("read_only", ["true", 1, None])
def test_read_only_must_be_a_bool(node: DbNode, read_only: Any) -> None:
    reject(node, ok(read_only=read_only), "read_only", "true or false")


@pytest.mark.parametrize("max_rows", [0, -1, 100_001, 1.5, "10", True, None])
def test_max_rows_must_be_an_int_in_range(node: DbNode, max_rows: Any) -> None:
    reject(node, ok(max_rows=max_rows), "max_rows", "integer from 1 to 100000")


def test_an_unsupported_url_fails_at_construction_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="database 'x': unsupported URL scheme 'mysql'") as info:
        DbNode({"x": "mysql://root:hunter2@db/app"})
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="sqlite:////absolute/path"):
        DbNode({"x": "sqlite://relative.db"})


def test_sqlite_urls() -> None:
    assert sqlite_uri("sqlite:////var/lib/a b.db") == "file:/var/lib/a%20b.db?mode=rw"
    assert sqlite_uri("sqlite:////tmp/x.db?mode=rwc") == "file:/tmp/x.db?mode=rwc"
    assert sqlite_uri("sqlite:////tmp/x.db?cache=shared") == "file:/tmp/x.db?cache=shared&mode=rw"
    relative = sqlite_uri("sqlite:///data/x.db")
    assert relative.startswith("file:/") and relative.endswith("/data/x.db?mode=rw")


async def test_execute_checks_the_config_again_before_connecting(node: DbNode) -> None:
    """A mapped ``params`` that lacks a name fails the attempt; db.internal is never contacted."""
    ctx = NodeContext("e1", "wf1", "n1", 1, 1.0)
    with pytest.raises(NodeFailure) as info:
        await node.execute(ctx, ok(query="select :id", params={"other": 1}), {})
    assert (info.value.error_type, info.value.retryable) == ("validation", False)
    assert "uses :id" in info.value.message


# --- JSON values --------------------------------------------------------------------------------


def test_to_json() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert to_json(Decimal("12.34")) == 12.34
    assert to_json(Decimal("NaN")) == "NaN"
    assert to_json(Decimal("-Infinity")) == "-Infinity"
    assert to_json(math.inf) == "Infinity"
    assert to_json(math.nan) == "NaN"
    assert to_json(moment) == "2024-01-02T03:04:05.678000+00:00"
    assert to_json(date(2024, 1, 2)) == "2024-01-02"
    assert to_json(time(3, 4)) == "03:04:00"
    assert to_json(timedelta(minutes=1, seconds=30)) == 90.0
    assert to_json(b"\x00\xff") == "AP8="
    assert to_json(memoryview(b"ab")) == "YWI="
    assert to_json(UUID("12345678-1234-5678-1234-567812345678")) == "12345678-1234-5678-1234-567812345678"
    assert to_json([Decimal(1), (b"a", None)]) == [1.0, ["YQ==", None]]
    assert to_json({"k": {Decimal("0.5")}}) == {"k": str({Decimal("0.5")})}
    assert to_json({"k": [True, 1, "s"]}) == {"k": [True, 1, "s"]}
