"""Idempotent start ids: the same team and key name the same run within a window, the previous
window's id is offered for the boundary, and ids never repeat across windows or teams."""

from __future__ import annotations

from datetime import timedelta

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.idempotency import WINDOW, check_key, execution_ids, same_start

T0 = from_millis(1_800_000_000_000)


def test_one_key_one_id_per_window_and_the_previous_window_is_named() -> None:
    now, previous = execution_ids("ops", "order-1", T0)
    assert execution_ids("ops", "order-1", T0 + timedelta(seconds=1))[0] == now
    later, before = execution_ids("ops", "order-1", T0 + WINDOW)
    assert later != now and before == now, "the next window names this one as its previous"
    assert previous not in (now, later)
    assert execution_ids("web", "order-1", T0)[0] != now, "per team"
    assert execution_ids("ops", "order-2", T0)[0] != now
    assert now.startswith("exec_") and len(now) == len("exec_") + 32


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_key_must_be_short_visible_ascii(key: str) -> None:
    with pytest.raises(ValidationError):
        check_key(key)


def test_a_repeat_is_the_same_start_only_with_the_same_workflow_and_input() -> None:
    body = {"id": "exec_1", "workflow_id": "wf", "input_data": {"a": 1, "b": [1, 2]}}
    assert same_start(body, "wf", {"b": [1, 2], "a": 1}), "key order does not count"
    assert not same_start(body, "other", {"a": 1, "b": [1, 2]}), "another workflow"
    assert not same_start(body, "wf", {"a": 2, "b": [1, 2]}), "another input"
    assert not same_start(body, "wf", {"a": 1.0, "b": [1, 2]}), "1 and 1.0 differ, as they do to a run"
    assert not same_start(body, "wf", {"a": True, "b": [1, 2]}), "true is not 1"
    assert same_start({"workflow_id": "wf", "input_data": None}, "wf", None)
