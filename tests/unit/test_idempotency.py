"""Idempotent start ids: the same team and key name the same run within a window, the previous
window's id is offered for the boundary, and ids never repeat across windows or teams."""

from __future__ import annotations

from datetime import timedelta

import pytest

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.idempotency import WINDOW, check_key, execution_ids

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
