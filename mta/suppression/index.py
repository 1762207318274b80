"""The list in memory: is this recipient suppressed? answered without a round trip.

Ten million entries must fit in about 100 MB and answer in microseconds, which a Python set
of strings (about 100 octets an entry) does not. Each entry is its 64-bit key
(mta.suppression.keys) in one sorted `array('q')` (8 octets an entry), searched with
`bisect` in C within the stretch its top 16 bits point to (a directory of 65,537
offsets, half a megabyte: about 8 probes instead of 24, each a cache miss at this size);
what changed since it was built sits in two small sets (added, removed) until the next
rebuild merges them. Two different addresses share a key with a chance of
about one in 10**12 at ten million entries; a hit is confirmed against the store, which
also gives the entry's reason for the result, so a collision never suppresses anyone.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable

REBUILD_AFTER = 100_000  # changes kept beside the array before it is rebuilt
SHIFT = 48  # a key's top 16 bits choose its stretch of the array
BIAS = 1 << 15  # signed keys: the stretch of the most negative ones first


def _directory(keys: array) -> array:
    """offsets[b] .. offsets[b + 1]: where keys whose top 16 bits are b - BIAS lie."""
    return array("q", (bisect_left(keys, (b - BIAS) << SHIFT) for b in range(1 << 16))) + array("q", [len(keys)])


class Index:
    __slots__ = ("_keys", "_offsets", "_added", "_removed")

    def __init__(self, sorted_keys: Iterable[int] = ()) -> None:
        self._keys = array("q", sorted_keys)
        self._offsets = _directory(self._keys)
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._keys) + len(self._added) - len(self._removed)

    def __contains__(self, key: int) -> bool:
        if key in self._added:
            return True
        if key in self._removed:
            return False
        return self._in_array(key)

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
        keys, offsets = self._keys, self._offsets
        b = (key >> SHIFT) + BIAS
        hi = offsets[b + 1]
        i = bisect_left(keys, key, offsets[b], hi)
        return i < hi and keys[i] == key

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
        self._keys, self._offsets, self._added, self._removed = merged, _directory(merged), set(), set()
