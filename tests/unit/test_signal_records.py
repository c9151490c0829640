"""Signal records as producers write them to ``linkflow.signals`` (JSON or Avro), the status
view's look-up of runs waiting on a name and key, and registration of wait_event nodes."""

from __future__ import annotations

import json

import pytest

from linkflow_stream.client import _calls as calls
from linkflow_stream.core.decider import decide
from linkflow_stream.core.messages import Signal
from linkflow_stream.core.validation import check_workflow
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import DecodeError, default_codec
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.signal_intake import decode_signal
from linkflow_stream.runtime.signals import broadcast_targets, signal_command
from linkflow_stream.settings import Settings
from projections.status import StatusView
from tests.unit.conftest import Factories, at

CODEC = default_codec()
REGISTRY = build_registry(Settings())


def test_a_json_signal_for_one_run() -> None:
    value = json.dumps({"name": "approved", "execution_id": "e1", "payload": {"ok": True}}).encode()
    assert decode_signal(CODEC, value) == Signal(name="approved", execution_id="e1", payload={"ok": True})


def test_a_json_broadcast_with_a_numeric_key_reads_it_as_its_json_text() -> None:
    value = json.dumps({"name": "paid", "correlation_key": 7, "id": "p-1"}).encode()
    assert decode_signal(CODEC, value) == Signal(name="paid", correlation_key="7", id="p-1")


def test_an_avro_signal() -> None:
    signal = Signal(name="paid", correlation_key="order-7", payload=[1, None])
    assert decode_signal(CODEC, CODEC.encode(signal)) == signal


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"{not json", "malformed"),
        (b'{"payload": 1, "execution_id": "e1"}', "name"),
        (b'{"name": "a"}', "exactly one of"),
        (b'{"name": "a", "execution_id": "e1", "correlation_key": "k"}', "exactly one of"),
        (b'{"name": "bad name", "execution_id": "e1"}', "signal name"),
        (b'{"name": "a", "execution_id": "e1", "payload": [NaN]}', "NaN is not a JSON number"),
        (CODEC.encode(Signal(name="a", execution_id="e1", payload={"x": float("nan")})), "NaN or Infinity"),
    ],
)
def test_what_is_not_a_signal_is_a_decode_error(value: bytes | None, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_signal(CODEC, value)


def wf(key: str | None = "input.k", name: str = "go") -> WorkflowDefinition:
    config: dict[str, object] = {"name": name, "timeout_seconds": 60}
    if key is not None:
        config["correlation_key"] = key
    return WorkflowDefinition(
        id="wf", nodes=(NodeDefinition(id="w", type="wait_event", config=config),), created_at=at()
    )


def test_the_status_view_finds_runs_waiting_on_a_name_and_key(lf: Factories) -> None:
    view = StatusView()
    config = decider_config(REGISTRY, Settings())
    for execution_id, key in (("a1", "A"), ("a2", "A"), ("b", "B")):
        for event in decide(None, lf.start(wf(), execution_id, {"k": key}), at(), config):
            view.apply(event)
    go = Signal(name="go", id="s", correlation_key="A")
    assert broadcast_targets(view, go) == ["a1", "a2"]
    assert broadcast_targets(view, go, lambda s: s.id != "a1") == ["a2"]
    assert broadcast_targets(view, go.model_copy(update={"name": "other"})) == []
    assert broadcast_targets(view, go.model_copy(update={"correlation_key": "C"})) == []
    out = signal_command("a1", go)
    assert (out.topic, out.key, out.ce_id) == ("linkflow.commands", "a1", "a1/signal/s")


def test_a_wait_event_node_takes_no_input_mapping() -> None:
    node = NodeDefinition(id="w", type="wait_event", config={"name": "go"}, input={"name": "input.n"})
    bad = WorkflowDefinition(id="wf", nodes=(node,), created_at=at())
    assert any("no input mapping" in p for p in check_workflow(bad, REGISTRY))
    assert check_workflow(wf(), REGISTRY) == []


def test_the_client_calls_for_signals() -> None:
    one = calls.signal_execution("run/1", "approved", {"ok": True}, signal_id="s-1")
    assert (one.method, one.url("http://h:1")) == (
        "POST",
        "http://h:1/api/executions/run%2F1/events/approved",
    )
    assert (one.headers, one.data()) == ({"Idempotency-Key": "s-1"}, b'{"ok": true}')
    assert calls.signal_execution("r", "a").data() is None  # no body: a signal without payload
    many = calls.broadcast_signal("paid", 7, [1])
    assert (many.url(""), many.body) == ("/api/events/paid", {"correlation_key": 7, "payload": [1]})
    assert calls.broadcast_signal("paid", "k", signal_id="b-1").body["id"] == "b-1"
