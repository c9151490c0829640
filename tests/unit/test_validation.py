"""Workflow validation at registration: the spec's example is accepted; every rejection names the
node and the field, so a 400 says what to fix."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.node_contract import NodeExecutor
from linkflow_stream.core.validation import check_workflow, parse_workflow
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.nodes import build_registry
from linkflow_stream.settings import Settings

CREATED = from_millis(1_700_000_000_000)

EXAMPLE: dict[str, Any] = {
    "id": "wf_123",
    "name": "example",
    "nodes": [
        {"id": "a", "type": "transform", "config": {"expression": "input.x + 1"}},
        {"id": "c", "type": "condition", "depends_on": ["a"], "config": {"expression": "nodes.a > 10"}},
        {"id": "big", "type": "transform", "depends_on": ["c:true"], "config": {"expression": "'big'"}},
        {"id": "w", "type": "wait", "config": {"seconds": 1.5}},
        {
            "id": "h",
            "type": "http",
            "depends_on": ["w", "a"],
            "config": {"url": "https://example.com/hook", "method": "POST", "json": {"a": 1}},
        },
    ],
}


@pytest.fixture(scope="module")
def registry() -> dict[str, NodeExecutor]:
    return build_registry(Settings())


def parse(body: Any, registry: dict[str, NodeExecutor]) -> WorkflowDefinition:
    return parse_workflow(body, registry, version=1, created_at=CREATED)


def rejection(body: Any, registry: dict[str, NodeExecutor]) -> str:
    with pytest.raises(ValidationError) as info:
        parse(body, registry)
    assert info.value.error_type == "validation"
    return info.value.message


def example(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    body.update(changes)
    return body


def with_node(body: dict[str, Any], node_id: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for node in body["nodes"]:
        if node["id"] == node_id:
            node.update(changes)
    return body


def single(node: dict[str, Any]) -> dict[str, Any]:
    return {"id": "wf", "nodes": [node]}


def tf(expr: str = "1", **extra: Any) -> dict[str, Any]:
    """The body of a transform node."""
    return {"type": "transform", "config": {"expression": expr}, **extra}


# ------------------------------------------------------------------------------------ accepted


def test_the_spec_example_is_accepted(registry: dict[str, NodeExecutor]) -> None:
    wf = parse(EXAMPLE, registry)
    assert (wf.id, wf.name, wf.version, wf.created_at) == ("wf_123", "example", 1, CREATED)
    assert [n.id for n in wf.nodes] == ["a", "c", "big", "w", "h"]
    assert [n.type for n in wf.nodes] == ["transform", "condition", "transform", "wait", "http"]
    assert wf.node("big").depends_on == ("c:true",)
    assert wf.node("h").depends_on == ("w", "a")
    assert wf.node("w").config == {"seconds": 1.5}
    assert wf.node("h").config["json"] == {"a": 1}
    assert check_workflow(wf, registry) == []


def test_version_and_creation_time_come_from_the_registry_not_the_body(
    registry: dict[str, NodeExecutor],
) -> None:
    wf = parse_workflow(
        example(version=99, created_at="1999-01-01T00:00:00Z"), registry, version=7, created_at=CREATED
    )
    assert (wf.version, wf.created_at) == (7, CREATED)
    assert wf.created_at.tzinfo is CREATED.tzinfo  # the registry's own instant, not a re-parse


def test_whole_numbers_are_numbers_of_seconds(registry: dict[str, NodeExecutor]) -> None:
    wf = parse(single({"id": "t", **tf(), "timeout_seconds": 5}) | {"timeout_seconds": 300}, registry)
    assert (wf.timeout_seconds, wf.nodes[0].timeout_seconds) == (300.0, 5.0)


@pytest.mark.parametrize("node_id", ["x" * 64, "A-b_9", "0"])
def test_well_formed_ids_are_accepted(registry: dict[str, NodeExecutor], node_id: str) -> None:
    assert parse(single({"id": node_id, **tf()}), registry).nodes[0].id == node_id


@pytest.mark.parametrize(
    "config",
    [
        {"seconds": 0},
        {"seconds": 30 * 86_400},
        {"seconds": 0.25},
    ],
)
def test_wait_bounds_are_inclusive(registry: dict[str, NodeExecutor], config: dict[str, Any]) -> None:
    assert parse(single({"id": "w", "type": "wait", "config": config}), registry).nodes[0].config == config


@pytest.mark.parametrize("method", ["GET", "post", "Delete", "HEAD", "OPTIONS", "PUT", "PATCH"])
def test_http_methods_are_case_insensitive(registry: dict[str, NodeExecutor], method: str) -> None:
    node = {
        "id": "h",
        "type": "http",
        "config": {"url": "http://example.com:8080/p?q=1", "method": method, "headers": {"X-Token": "t"}},
    }
    assert parse(single(node), registry).nodes[0].config["method"] == method


def test_a_node_may_follow_both_branches_and_a_plain_condition(registry: dict[str, NodeExecutor]) -> None:
    body = {
        "id": "wf",
        "nodes": [
            {"id": "c", "type": "condition", "config": {"expression": "true"}},
            {"id": "both", **tf(), "depends_on": ["c:true", "c:false"]},
            {"id": "plain", **tf(), "depends_on": ["c"]},
        ],
    }
    assert [n.id for n in parse(body, registry).nodes] == ["c", "both", "plain"]


# ------------------------------------------------------------------------------------ rejected


REJECTIONS: list[tuple[str, Any, list[str]]] = [
    (
        "duplicate id",
        example(nodes=[*EXAMPLE["nodes"], {"id": "a", **tf()}]),
        ["node 'a': duplicate node id"],
    ),
    ("id with a space", single({"id": "a b", **tf()}), ["node 'a b': id must match"]),
    ("id of 65 characters", single({"id": "x" * 65, **tf()}), [f"node '{'x' * 65}': id must match"]),
    ("empty id", single({"id": "", **tf()}), ["node '': id must match"]),
    ("id with a colon", single({"id": "a:true", **tf()}), ["node 'a:true': id must match"]),
    (
        "unknown type",
        with_node(EXAMPLE, "big", type="python"),
        [
            "node 'big': type: unknown type 'python'",
            "known: code, condition, db, http, transform, wait, wait_event, workflow",
        ],
    ),
    (
        "depends_on to nowhere",
        with_node(EXAMPLE, "h", depends_on=["w", "zz"]),
        ["node 'h': depends_on: 'zz' is not a node of this workflow"],
    ),
    (
        "depends on itself",
        with_node(EXAMPLE, "a", depends_on=["a"]),
        ["node 'a': depends_on: a node cannot depend on itself"],
    ),
    (
        "JSONata syntax error",
        with_node(EXAMPLE, "a", config={"expression": "$sum(("}),
        ["node 'a': config.expression: JSONata syntax error"],
    ),
    (
        "empty expression",
        with_node(EXAMPLE, "c", config={"expression": "  "}),
        ["node 'c': config.expression: a JSONata expression (non-empty string) is required"],
    ),
    (
        "expression not a string",
        with_node(EXAMPLE, "c", config={"expression": 5}),
        ["node 'c': config.expression"],
    ),
    (
        "unknown transform field",
        with_node(EXAMPLE, "a", config={"expression": "1", "code": "x"}),
        ["node 'a': config.code: unknown field"],
    ),
    (
        "branch on a non-condition node",
        with_node(EXAMPLE, "big", depends_on=["a:true"]),
        [
            "node 'big': depends_on: 'a:true' picks a branch of a transform node",
            "only condition nodes have branches",
        ],
    ),
    (
        "branch that is not true/false",
        with_node(EXAMPLE, "big", depends_on=["c:maybe"]),
        ["node 'big': depends_on:", "'c:maybe'", "':true' or ':false'"],
    ),
    (
        "wait without seconds",
        with_node(EXAMPLE, "w", config={}),
        ["node 'w': config.seconds: a number of seconds is required"],
    ),
    (
        "wait seconds as text",
        with_node(EXAMPLE, "w", config={"seconds": "5"}),
        ["node 'w': config.seconds: a number of seconds is required"],
    ),
    (
        "wait seconds as a boolean",
        with_node(EXAMPLE, "w", config={"seconds": True}),
        ["node 'w': config.seconds: a number of seconds is required"],
    ),
    (
        "negative wait",
        with_node(EXAMPLE, "w", config={"seconds": -1}),
        ["node 'w': config.seconds: must be between 0 and 2592000"],
    ),
    (
        "wait longer than 30 days",
        with_node(EXAMPLE, "w", config={"seconds": 30 * 86_400 + 1}),
        ["node 'w': config.seconds: must be between 0 and 2592000"],
    ),
    ("wait NaN", with_node(EXAMPLE, "w", config={"seconds": float("nan")}), ["node 'w': config.seconds"]),
    (
        "http without url",
        with_node(EXAMPLE, "h", config={"method": "GET"}),
        ["node 'h': config.url: an http(s) URL is required"],
    ),
    (
        "http url of another scheme",
        with_node(EXAMPLE, "h", config={"url": "ftp://example.com/x"}),
        ["node 'h': config.url: 'ftp://example.com/x' is not an absolute http(s) URL"],
    ),
    (
        "http relative url",
        with_node(EXAMPLE, "h", config={"url": "/hook"}),
        ["node 'h': config.url: '/hook' is not an absolute http(s) URL"],
    ),
    (
        "http url that is not a url",
        with_node(EXAMPLE, "h", config={"url": "not a url"}),
        ["node 'h': config.url:"],
    ),
    (
        "http url without host",
        with_node(EXAMPLE, "h", config={"url": "https:///path"}),
        ["node 'h': config.url:"],
    ),
    (
        "http url not a string",
        with_node(EXAMPLE, "h", config={"url": ["https://example.com"]}),
        ["node 'h': config.url"],
    ),
    (
        "http bad method",
        with_node(EXAMPLE, "h", config={"url": "https://example.com", "method": "FETCH"}),
        ["node 'h': config.method: must be one of DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"],
    ),
    (
        "http method not a string",
        with_node(EXAMPLE, "h", config={"url": "https://example.com", "method": 1}),
        ["node 'h': config.method"],
    ),
    (
        "http headers not strings",
        with_node(EXAMPLE, "h", config={"url": "https://e.com", "headers": {"a": 1}}),
        ['node \'h\': config.headers.a: must be a string or {"secret": "NAME"}'],
    ),
    (
        "http unknown field",
        with_node(EXAMPLE, "h", config={"url": "https://e.com", "body": "x"}),
        ["node 'h': config.body: unknown field"],
    ),
    ("node config not an object", with_node(EXAMPLE, "a", config="input.x"), ["node 'a': config:"]),
    (
        "unknown node field",
        with_node(EXAMPLE, "a", bogus=1),
        ["node 'a': bogus: Extra inputs are not permitted"],
    ),
    ("node timeout zero", with_node(EXAMPLE, "h", timeout_seconds=0), ["node 'h': timeout_seconds:"]),
    (
        "retry with zero attempts",
        with_node(EXAMPLE, "h", retry={"max_attempts": 0}),
        ["node 'h': retry.max_attempts:"],
    ),
    ("retry unknown field", with_node(EXAMPLE, "h", retry={"tries": 3}), ["node 'h': retry.tries:"]),
    ("bad pool", with_node(EXAMPLE, "h", pool="GPU pool"), ["node 'h': pool:"]),
    ("depends_on not a list", with_node(EXAMPLE, "c", depends_on="a"), ["node 'c': depends_on:"]),
    ("ill-formed workflow id", example(id="wf 1"), ["id: 'wf 1' must match"]),
    ("no nodes", example(nodes=[]), ["nodes: a workflow needs at least one node"]),
    ("nodes missing", {"id": "wf"}, ["nodes: Field required"]),
    ("workflow timeout negative", example(timeout_seconds=-5), ["timeout_seconds:"]),
    ("unknown workflow field", example(owner="me"), ["owner: Extra inputs are not permitted"]),
    # Strict, as every other body: a number written as text, or a boolean, is not a number.
    (
        "workflow timeout as text",
        example(timeout_seconds="300"),
        ["timeout_seconds: Input should be a valid number"],
    ),
    (
        "node timeout as text",
        single({"id": "t", **tf(), "timeout_seconds": "5"}),
        ["node 't': timeout_seconds: Input should be a valid number"],
    ),
    (
        "attempts as a boolean",
        example(retry={"max_attempts": True}),
        ["retry.max_attempts: Input should be a valid integer"],
    ),
    (
        "concurrency as text",
        example(concurrency={"max": "3"}),
        ["concurrency.max: Input should be a valid integer"],
    ),
    (
        "a rate as text",
        single(
            {
                "id": "h",
                "type": "http",
                "config": {"url": "https://example.com/"},
                "rate_limit": {"per_second": "2"},
            }
        ),
        ["node 'h': rate_limit.per_second: Input should be a valid number"],
    ),
    ("nodes as an object", {"id": "wf", "nodes": {"a": tf()}}, ["nodes: Input should be a valid array"]),
]


@pytest.mark.parametrize(
    ("body", "expected"), [(b, e) for _, b, e in REJECTIONS], ids=[name for name, _, _ in REJECTIONS]
)
def test_rejections_name_the_node_and_the_field(
    registry: dict[str, NodeExecutor], body: Any, expected: list[str]
) -> None:
    message = rejection(body, registry)
    assert message.startswith("invalid workflow: ")
    for part in expected:
        assert part in message


@pytest.mark.parametrize("body", [None, [], [EXAMPLE], "workflow", 42, True])
def test_a_body_that_is_not_an_object_is_rejected(registry: dict[str, NodeExecutor], body: Any) -> None:
    assert rejection(body, registry) == "the workflow must be a JSON object"


@pytest.mark.parametrize(
    ("nodes", "cycle"),
    [
        ([{"id": "a", **tf(), "depends_on": ["b"]}, {"id": "b", **tf(), "depends_on": ["a"]}], {"a", "b"}),
        (
            [
                {"id": "x", **tf()},
                {"id": "a", **tf(), "depends_on": ["c", "x"]},
                {"id": "b", **tf(), "depends_on": ["a"]},
                {"id": "c", "type": "condition", "config": {"expression": "true"}, "depends_on": ["b"]},
            ],
            {"a", "b", "c"},
        ),
        # a cycle through a condition branch is still a cycle
        (
            [
                {"id": "c", "type": "condition", "config": {"expression": "true"}, "depends_on": ["a"]},
                {"id": "a", **tf(), "depends_on": ["c:true"]},
            ],
            {"a", "c"},
        ),
    ],
)
def test_cycles_are_rejected_with_the_path(
    registry: dict[str, NodeExecutor], nodes: list[dict[str, Any]], cycle: set[str]
) -> None:
    message = rejection({"id": "wf", "nodes": nodes}, registry)
    match = re.search(r"nodes: dependency cycle (.+?)(?:; |$)", message)
    assert match, message
    path = match.group(1).split(" -> ")
    assert path[0] == path[-1]
    assert set(path) == cycle
    by_id = {n["id"]: {d.partition(":")[0] for d in n.get("depends_on", [])} for n in nodes}
    for node, dep in itertools.pairwise(path):
        assert dep in by_id[node], f"{node} -> {dep} is not an edge"


def test_every_problem_is_reported_at_once(registry: dict[str, NodeExecutor]) -> None:
    body = with_node(with_node(EXAMPLE, "w", config={}), "h", config={"url": "ftp://x"})
    message = rejection(body, registry)
    assert "node 'w': config.seconds" in message
    assert "node 'h': config.url" in message


def test_a_pydantic_error_on_a_node_without_an_id_names_its_position(
    registry: dict[str, NodeExecutor],
) -> None:
    body = {"id": "wf", "nodes": [{"type": "transform", "config": {"expression": "1"}}]}
    message = rejection(body, registry)
    assert "nodes[0]: id: Field required" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",  # unclosed IPv6 literal
        "http://example.com:99999/",  # port out of range
        "http://example.com:abc/",  # port not a number
        "http://:80/",  # no host
    ],
)
def test_malformed_http_urls_are_rejected_as_validation_errors(
    registry: dict[str, NodeExecutor], url: str
) -> None:
    message = rejection(with_node(EXAMPLE, "h", config={"url": url}), registry)
    assert "node 'h': config.url" in message


def test_a_pool_a_node_names_must_exist_whatever_runs_the_node(registry: dict[str, NodeExecutor]) -> None:
    """A transform runs in the orchestrator and uses no pool, but a pool it names is checked as a
    task node's is: a typo is refused now, not when the node's type changes."""
    pools = frozenset({"default", "gpu"})

    def parse(node: dict[str, Any]) -> WorkflowDefinition:
        return parse_workflow(
            {"id": "p", "nodes": [node]}, registry, version=1, created_at=CREATED, pools=pools
        )

    transform = {"id": "t", "type": "transform", "config": {"expression": "1"}}
    with pytest.raises(
        ValidationError, match=re.escape("node 't': pool: no pool 'nopool' (pools: default, gpu)")
    ):
        parse({**transform, "pool": "nopool"})
    assert parse({**transform, "pool": "gpu"}).nodes[0].pool == "gpu"
    assert parse(transform).nodes[0].pool == "default", "no pool named: nothing to check"
    for node in (transform, {**transform, "pool": "default"}):  # as GET gives a definition back
        assert parse_workflow(
            {"id": "p", "nodes": [node]}, registry, version=1, created_at=CREATED, pools=frozenset({"gpu"})
        ).nodes, "an inline node that names no pool, or the default, needs no 'default' pool"
