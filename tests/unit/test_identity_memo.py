"""``IdentityMemo``: a value per live object, never another object's, and never keeping one alive."""

from __future__ import annotations

import gc
import weakref

from linkflow_stream.core.identity_memo import IdentityMemo


class Thing:
    def __init__(self, name: str) -> None:
        self.name = name


def counting() -> tuple[IdentityMemo[Thing, str], list[str]]:
    made: list[str] = []

    def make(thing: Thing) -> str:
        made.append(thing.name)
        return thing.name.upper()

    return IdentityMemo(make, limit=100), made


def test_a_value_is_made_once_per_object() -> None:
    memo, made = counting()
    a, also_a = Thing("a"), Thing("a")
    assert [memo(a), memo(a), memo(also_a)] == ["A", "A", "A"]
    assert made == ["a", "a"], "an equal object is another object"
    assert a in memo and also_a in memo and Thing("b") not in memo


def test_an_entry_goes_with_its_object_and_does_not_keep_it() -> None:
    memo, _made = counting()
    a = Thing("a")
    memo(a)
    gone = weakref.ref(a)
    del a
    assert gone() is None, "the memo kept its object alive"
    assert len(memo) == 0


def test_a_value_kept_under_an_id_is_never_another_objects() -> None:
    """An id is reused once its object is freed; the entry goes first. Planted here (CPython's
    reuse cannot be forced): another live object's entry under this object's id."""
    memo, made = counting()
    a, b = Thing("a"), Thing("b")
    memo(a)
    memo._entries[id(b)] = memo._entries.pop(id(a))
    assert memo(b) == "B"
    assert made == ["a", "b"]


def test_past_the_limit_the_newest_half_stays_and_dropped_entries_never_call_back() -> None:
    memo: IdentityMemo[Thing, str] = IdentityMemo(lambda t: t.name, limit=4)
    things = [Thing(str(n)) for n in range(5)]
    for thing in things:
        memo(thing)
    assert len(memo) == 3
    assert [t in memo for t in things] == [False, False, True, True, True]
    first = things.pop(0)  # dropped from the memo before it goes: no call back, no error
    del first
    gc.collect()
    assert len(memo) == 3


def test_weights_are_bounded_and_a_value_refused_is_made_each_time() -> None:
    memo: IdentityMemo[Thing, bytes] = IdentityMemo(
        lambda t: t.name.encode(), limit=100, weigh=len, weight_limit=10, keep=lambda _t, v: len(v) <= 6
    )
    big = Thing("x" * 7)
    memo(big)
    assert big not in memo and memo.weight == 0
    things = [Thing(f"{n:05d}") for n in range(3)]
    for thing in things:
        memo(thing)
    assert memo.weight <= 10 and things[-1] in memo
    kept = memo.weight
    del thing, things[-1]
    assert memo.weight == kept - 5, "an object gone takes its weight with it"
    memo.clear()
    assert len(memo) == 0 and memo.weight == 0
