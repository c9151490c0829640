"""Weighted turns between the priorities (core/turns.py): a pure function, tested alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from hypothesis import given
from hypothesis import strategies as st

from linkflow_stream.core.messages import Priority
from linkflow_stream.core.turns import next_turn, weights_of

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
DEFAULT = weights_of((8, 3, 1))


def turns(weights: dict[Priority, int], waiting: list[Collection[Priority]]) -> list[Priority | None]:
    """The priority served at each turn, for what waits at each turn."""
    credits: dict[Priority, int] = {}
    served = []
    for ready in waiting:
        chosen, credits = next_turn(weights, credits, ready)
        served.append(chosen)
    return served


def test_all_waiting_twelve_turns_serve_eight_three_one() -> None:
    served = turns(DEFAULT, [set(Priority)] * 12)
    assert Counter(served) == {HIGH: 8, NORMAL: 3, LOW: 1}
    assert served[0] is HIGH
    # interleaved, not eight highs in a row: normal comes within the first four turns
    assert NORMAL in served[:4]


def test_the_shares_hold_over_many_rounds() -> None:
    served = turns(DEFAULT, [set(Priority)] * 1200)
    assert Counter(served) == {HIGH: 800, NORMAL: 300, LOW: 100}


def test_low_never_starves_it_is_served_in_every_window_of_twelve() -> None:
    served = turns(DEFAULT, [set(Priority)] * 600)
    for start in range(len(served) - 12):
        assert LOW in served[start : start + 12], start


def test_what_alone_waits_is_served_at_once() -> None:
    assert turns(DEFAULT, [{LOW}] * 3) == [LOW, LOW, LOW]
    assert turns(DEFAULT, [{NORMAL, LOW}] * 4) == [NORMAL, NORMAL, LOW, NORMAL]  # 3:1, interleaved


def test_nothing_waiting_serves_nothing_and_keeps_the_credits() -> None:
    chosen, credits = next_turn(DEFAULT, {HIGH: -3, LOW: 2}, ())
    assert chosen is None and credits == {HIGH: -3, LOW: 2}


def test_a_priority_that_stops_waiting_loses_its_credit() -> None:
    """Low, idle for a while, may not come back with a hoard of turns."""
    credits: dict[Priority, int] = {}
    for _ in range(5):
        _, credits = next_turn(DEFAULT, credits, {HIGH, LOW})
    _, credits = next_turn(DEFAULT, credits, {HIGH})
    assert LOW not in credits


def test_other_weights() -> None:
    served = turns(weights_of((1, 1, 1)), [set(Priority)] * 9)
    assert Counter(served) == {HIGH: 3, NORMAL: 3, LOW: 3}
    assert served[:3] == [HIGH, NORMAL, LOW]


@given(
    st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)),
    st.lists(st.frozensets(st.sampled_from(list(Priority))), min_size=1, max_size=200),
)
def test_only_what_waits_is_served_and_something_is_when_anything_waits(
    weights: tuple[int, int, int], waiting: list[frozenset[Priority]]
) -> None:
    served = turns(weights_of(weights), waiting)
    for ready, chosen in zip(waiting, served, strict=True):
        assert (chosen is None) == (not ready)
        assert chosen is None or chosen in ready


@given(st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)), st.integers(1, 5))
def test_while_all_wait_every_full_round_serves_exactly_the_weights(
    weights: tuple[int, int, int], rounds: int
) -> None:
    served = turns(weights_of(weights), [set(Priority)] * (sum(weights) * rounds))
    assert Counter(served) == {p: w * rounds for p, w in zip(Priority, weights, strict=True)}
