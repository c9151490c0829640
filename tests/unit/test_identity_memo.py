"""``IdentityMemo``: a value per live object, never another object's, and never keeping one alive."""

from __future__ import annotations

import gc
import weakref

import pytest

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
    assert a in memo
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


def test_an_entry_dropped_earlier_never_takes_a_later_entry_with_it() -> None:
    """An entry trimmed or cleared away while its object lives, then made again: the object's
    going removes the later entry once, and the weight with it."""
    memo: IdentityMemo[Thing, bytes] = IdentityMemo(lambda t: t.name.encode(), limit=10, weigh=len)
    a = Thing("abc")
    memo(a)
    earlier = memo._entries[id(a)]
    memo.clear()
    memo(a)
    b = Thing("b")
    memo(b)
    del a
    assert earlier() is None
    assert len(memo) == 1 and b in memo and memo.weight == 1


def test_an_entry_whose_object_went_amid_a_trim_is_left_out_and_its_weight_with_it() -> None:
    """A collection can run while a trim copies the entries (any allocation may set one off) and
    free a kept object, whose callback then works on the dict being replaced, so the copy holds a
    dead entry. Planted here (the collector's timing cannot be forced): a dead entry among the
    entries when the next trim comes."""
    memo: IdentityMemo[Thing, bytes] = IdentityMemo(lambda t: t.name.encode(), limit=3, weigh=len)
    things = [Thing(f"t{n}") for n in range(3)]  # made first: none can take the doomed one's id
    doomed = Thing("dd")
    memo(doomed)
    dead = memo._entries[id(doomed)]
    memo.clear()
    del doomed
    assert dead() is None
    memo(things[0])
    memo(things[1])
    memo._entries[dead.key] = dead  # among the newest half of the next trim
    memo.weight += dead.weight
    memo(things[2])  # trims: four entries past a limit of three
    assert dead not in memo._entries.values()
    assert all(e() is not None for e in memo._entries.values())
    assert memo.weight == sum(e.weight for e in memo._entries.values()) == 2 * len(memo)


def test_a_weight_limit_needs_a_way_to_weigh() -> None:
    with pytest.raises(ValueError, match="weigh"):
        IdentityMemo(lambda t: t, limit=1, weight_limit=1)
