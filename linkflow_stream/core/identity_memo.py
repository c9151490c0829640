"""What a function gave for an object, kept while that object lives (ADR 0070).

A memo keyed by ``id()`` must not outlive its key's object, or a later object at the same address
would be served the earlier one's value. Holding the object makes that safe, but keeps it alive for
as long as the memo keeps the entry, and each such object is one more that CPython's cyclic
collector scans in its passes: a churn of them (a run's node states, kept after it ended) made
those passes last tens of milliseconds under load, holding every run in flight meanwhile. An
entry here refers to its object weakly and goes when the object goes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

Forget = Callable[[weakref.ReferenceType[object]], None]


class _Entry(weakref.KeyedRef[int, object], Generic[V]):
    """A weak reference to the object (``key``: its id), the value made for it and its weight."""

    __slots__ = ("value", "weight")
    value: V
    weight: int

    def __new__(cls, obj: object, forget: Forget, value: V, weight: int) -> _Entry[V]:
        entry = super().__new__(cls, obj, forget, id(obj))
        entry.value = value
        entry.weight = weight
        return entry

    def __init__(self, obj: object, forget: Forget, value: V, weight: int) -> None:
        super().__init__(obj, forget, id(obj))


class IdentityMemo(Generic[K, V]):
    """``make(obj)``, made once per live object. At most ``limit`` entries and, with ``weigh``,
    ``weight_limit`` of their weight: past either, the newest half stays (an entry dropped is
    freed with its reference, which then never calls back). A value that ``keep(obj, value)``
    refuses is made each time instead of kept. Not locked: call it from one thread (an object
    it keeps may be freed on any)."""

    def __init__(
        self,
        make: Callable[[K], V],
        *,
        limit: int,
        weigh: Callable[[V], int] | None = None,
        weight_limit: int | None = None,
        keep: Callable[[K, V], bool] | None = None,
    ) -> None:
        if weight_limit is not None and weigh is None:
            raise ValueError("a weight limit needs a way to weigh")
        self._make = make
        self._limit = limit
        self._weigh = weigh
        self._weight_limit = weight_limit
        self._keep = keep
        self._entries: dict[int, _Entry[V]] = {}
        self.weight = 0
        """The kept values' weight (exact on one thread; an object freed on another amid a trim
        can leave it off until the next trim)."""
        self._forget: Forget = self._gone
        """One bound method for every entry's callback, not a new one (a tracked object) each."""

    def __call__(self, obj: K) -> V:
        entry = self._entries.get(id(obj))
        if entry is not None and entry() is obj:
            return entry.value
        value = self._make(obj)
        if self._keep is not None and not self._keep(obj, value):
            return value
        weight = self._weigh(value) if self._weigh is not None else 0
        # Looked up again, not taken from the lookup above: ``make`` may have freed objects, whose
        # callbacks took their entries and weight already. What is left under the id is another
        # object's, freed amid a trim (below).
        replaced = self._entries.get(id(obj))
        if replaced is not None:
            self.weight -= replaced.weight
        self._entries[id(obj)] = _Entry(obj, self._forget, value, weight)
        self.weight += weight
        if len(self._entries) > self._limit or (
            self._weight_limit is not None and self.weight > self._weight_limit
        ):
            newest = list(self._entries.values())[len(self._entries) // 2 :]  # insertion order
            # An object freed meanwhile (a collection the list's allocation set off) has already
            # called back, on the dict replaced here: its entry is left out.
            kept = [e for e in newest if e() is not None]
            self._entries = {e.key: e for e in kept}
            self.weight = sum(e.weight for e in kept)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, obj: object) -> bool:
        entry = self._entries.get(id(obj))
        return entry is not None and entry() is obj

    def clear(self) -> None:
        self._entries = {}
        self.weight = 0

    def _gone(self, ref: weakref.ReferenceType[object]) -> None:
        """The object was freed: its id may now be another's, so its entry goes. (It may run as
        the interpreter exits, with this module's names gone: it names none.)"""
        # Every reference here is an entry. (Not ``cast``: that is a module name, gone at exit.)
        entry: _Entry[V] = ref  # type: ignore[assignment]
        entries = self._entries  # the object may be freed on another thread, amid a trim
        if entries.get(entry.key) is entry:
            entries.pop(entry.key, None)
            self.weight -= entry.weight
