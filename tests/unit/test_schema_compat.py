"""Schema compatibility: the current schemas must read every record the last release wrote.

``schemas/released/<version>/`` is a snapshot of ``schemas/*.avsc`` as released. For every
released schema, random records are written with it and read with the current schema (Avro
schema resolution, as a consumer running the new code reads an old topic). A second group of
tests proves the check bites: in-memory variants with a breaking change are caught, a compatible
change is not.
"""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import load_schema
from fastavro.utils import generate_many

from linkflow_stream.kafka import codec

RELEASED = codec.SCHEMA_DIR / "released"
RECORDS_PER_SCHEMA = 100
SNAPSHOT_HINT = (
    "no released schema snapshot under schemas/released/: snapshot the schemas of the release, e.g. "
    "`mkdir -p schemas/released/0.1.0 && cp schemas/*.avsc schemas/released/0.1.0/`"
)


def version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        pytest.fail(f"schemas/released/{path.name}: a release directory is named by its version, like 0.1.0")


def latest_release() -> Path:
    if not RELEASED.is_dir():
        pytest.fail(SNAPSHOT_HINT)
    versions = [d for d in RELEASED.iterdir() if d.is_dir()]
    if not versions:
        pytest.fail(SNAPSHOT_HINT)
    return max(versions, key=version_key)


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """fastavro's generators use the global ``random``: seed it, and give the state back after."""
    saved = random.getstate()
    random.seed(7)
    yield
    random.setstate(saved)


def read_problems(
    released: dict[str, Any], current: dict[str, Any], count: int = RECORDS_PER_SCHEMA
) -> list[str]:
    """Why the ``current`` schemas cannot read what the ``released`` ones wrote (empty if they can)."""
    problems = []
    for name, writer in sorted(released.items()):
        reader = current.get(name)
        if reader is None:
            problems.append(f"{name}: released, but no current schema has that name")
            continue
        for datum in generate_many(writer, count):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, datum)
            try:
                value = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), writer, reader)
            except Exception as exc:  # noqa: BLE001 - any failure to resolve is the finding
                problems.append(f"{name}: cannot read a released record: {type(exc).__name__}: {exc}")
                break
            if isinstance(reader, dict) and reader.get("type") == "record":
                fields = [f["name"] for f in reader["fields"]]
                if not isinstance(value, dict) or sorted(value) != sorted(fields):
                    problems.append(f"{name}: read {value!r}, expected the fields {fields}")
                    break
    return problems


class MemoryRepository(AbstractSchemaRepository):
    """Schemas by full name, from dicts: variants built in the test, never written to disk."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def load(self, name: str) -> Any:
        if name not in self.raw:
            raise SchemaRepositoryError(name)
        return copy.deepcopy(self.raw[name])


def raw_current() -> dict[str, Any]:
    return {p.name.removesuffix(".avsc"): json.loads(p.read_text()) for p in codec.SCHEMA_DIR.glob("*.avsc")}


def parse_all(raw: dict[str, Any]) -> dict[str, Any]:
    repo = MemoryRepository(raw)
    return {name: load_schema(name, repo=repo, _write_hint=False) for name in raw}


# ------------------------------------------------------------------------------- the check


def test_a_released_snapshot_exists() -> None:
    latest = latest_release()
    names = sorted(p.name for p in latest.glob("*.avsc"))
    assert names, f"{latest} holds no .avsc files: {SNAPSHOT_HINT}"


@pytest.mark.usefixtures("seeded_random")
def test_current_schemas_read_every_record_of_the_last_release() -> None:
    latest = latest_release()
    released = codec.SchemaSet(latest).by_name
    current = codec.SchemaSet(codec.SCHEMA_DIR).by_name
    assert released, f"{latest} holds no schemas"
    problems = read_problems(released, current)
    assert not problems, (
        f"the current schemas cannot read data written with release {latest.name}; new fields need "
        "defaults, enum symbols and union branches may not be removed:\n  " + "\n  ".join(problems)
    )


def test_every_released_schema_set_is_known_to_the_default_codec() -> None:
    """Records written by any release decode with the current code (by fingerprint)."""
    latest = latest_release()
    c = codec.default_codec()
    for fp in codec.SchemaSet(latest).by_fingerprint:
        assert fp in c.writers


def without_parse_marks(schema: Any) -> Any:
    """The schema without the bookkeeping keys fastavro adds to parsed dicts (``__fastavro_parsed``...)."""
    if isinstance(schema, dict):
        return {k: without_parse_marks(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [without_parse_marks(v) for v in schema]
    return schema


def test_in_memory_parse_matches_the_codec_schemas() -> None:
    """The variant tests below parse schemas in memory; unchanged, that gives the codec's schemas."""
    parsed = parse_all(raw_current())
    expected = codec.SchemaSet(codec.SCHEMA_DIR).by_name
    assert sorted(parsed) == sorted(expected)
    for name, schema in parsed.items():
        assert without_parse_marks(schema) == without_parse_marks(expected[name]), name


# ----------------------------------------------------------------- the check bites (variants)


def with_field(raw: dict[str, Any], name: str, field: dict[str, Any]) -> dict[str, Any]:
    variant = copy.deepcopy(raw)
    variant[name]["fields"].append(field)
    return variant


@pytest.mark.usefixtures("seeded_random")
def test_a_new_field_without_default_is_caught() -> None:
    raw = raw_current()
    released = parse_all(raw)
    broken = parse_all(with_field(raw, "io.linkflow.ControlMessage", {"name": "tenant", "type": "string"}))
    problems = read_problems(released, broken, count=5)
    assert problems
    assert all(p.startswith("io.linkflow.ControlMessage: cannot read") for p in problems), problems
    assert "tenant" in problems[0]


@pytest.mark.usefixtures("seeded_random")
def test_a_new_field_without_default_in_a_nested_record_is_caught_where_it_is_used() -> None:
    raw = raw_current()
    released = parse_all(raw)
    broken = parse_all(with_field(raw, "io.linkflow.NodeError", {"name": "code", "type": "int"}))
    problems = read_problems(released, broken, count=40)
    failing = {p.split(":", 1)[0] for p in problems}
    # NodeError itself and the records that embed it (when the random record carries an error)
    assert "io.linkflow.NodeError" in failing
    assert failing & {"io.linkflow.NodeResult", "io.linkflow.ExecutionEvent", "io.linkflow.NodeState"}


@pytest.mark.usefixtures("seeded_random")
def test_a_removed_enum_symbol_is_caught() -> None:
    raw = raw_current()
    released = parse_all(raw)
    variant = copy.deepcopy(raw)
    variant["io.linkflow.TimerKind"]["symbols"].remove("retry")
    problems = read_problems(
        {"io.linkflow.TimerKind": released["io.linkflow.TimerKind"]}, parse_all(variant), count=50
    )
    assert problems
    assert "retry" in problems[0]


@pytest.mark.usefixtures("seeded_random")
def test_a_changed_field_type_is_caught() -> None:
    raw = raw_current()
    released = parse_all(raw)
    variant = copy.deepcopy(raw)
    for f in variant["io.linkflow.NodeResult"]["fields"]:
        if f["name"] == "attempt":
            f["type"] = "string"
    problems = read_problems(
        {"io.linkflow.NodeResult": released["io.linkflow.NodeResult"]}, parse_all(variant), count=5
    )
    assert problems


@pytest.mark.usefixtures("seeded_random")
def test_a_new_field_with_default_and_a_promoted_type_pass() -> None:
    raw = raw_current()
    released = parse_all(raw)
    variant = with_field(
        raw, "io.linkflow.ControlMessage", {"name": "tenant", "type": ["null", "string"], "default": None}
    )
    for f in variant["io.linkflow.NodeResult"]["fields"]:
        if f["name"] == "attempt":
            f["type"] = "long"  # int -> long is a legal promotion
    assert read_problems(released, parse_all(variant), count=20) == []
