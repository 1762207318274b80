"""The list in memory: is this recipient suppressed? answered without a round trip.

Ten million entries must fit in about 100 MB and answer in microseconds, which a Python set
of strings (about 100 octets an entry) does not. Each entry is its 64-bit key
(mta.suppression.keys) in one sorted `array('q')` (8 octets an entry), searched with
`bisect` in C; what changed since it was built sits in two small sets (added, removed)
until the next rebuild merges them. Two different addresses share a key with a chance of
about one in 10**12 at ten million entries; a hit is confirmed against the store, which
also gives the entry's reason for the result, so a collision never suppresses anyone.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable

REBUILD_AFTER = 100_000  # changes kept beside the array before it is rebuilt


class Index:
    __slots__ = ("_keys", "_added", "_removed")

    def __init__(self, sorted_keys: Iterable[int] = ()) -> None:
        self._keys = array("q", sorted_keys)
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._keys) + len(self._added) - len(self._removed)

    def __contains__(self, key: int) -> bool:
        if key in self._added:
            return True
        if key in self._removed:
            return False
        keys = self._keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def add(self, key: int) -> None:
        self._removed.discard(key)
        if not self._in_array(key):
            self._added.add(key)
        self._maybe_rebuild()

    def remove(self, key: int) -> None:
        self._added.discard(key)
        if self._in_array(key):
            self._removed.add(key)
        self._maybe_rebuild()

    def _in_array(self, key: int) -> bool:
        keys = self._keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def _maybe_rebuild(self) -> None:
        if len(self._added) + len(self._removed) >= REBUILD_AFTER:
            self.rebuild()

    def rebuild(self) -> None:
        """Merge the changes into the array (one pass; the array is rebuilt, not sorted)."""
        removed, added = self._removed, sorted(self._added)
        merged = array("q")
        keys = self._keys
        j = 0
        for k in keys:
            while j < len(added) and added[j] < k:
                merged.append(added[j])
                j += 1
            if k not in removed:
                merged.append(k)
        merged.extend(added[j:])
        self._keys, self._added, self._removed = merged, set(), set()
