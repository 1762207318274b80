"""A queue that takes turns between campaigns.

Theory of operation: bulk mail for one destination arrives in campaigns (the first tag of
a message names its campaign; untagged mail is one campaign of its own). A plain FIFO lets
a campaign of 100,000 messages that arrived first starve a campaign of 50 that arrived a
second later. `FairQueue` keeps one FIFO per campaign and a ring of the campaigns that have
mail, and `popleft` serves the ring round-robin, one message per turn: every campaign gets
an equal share of the destination, and inside a campaign the order is kept. `appendleft`
puts a message back at the head of its campaign and that campaign at the head of the ring
(a message that was taken but could not be sent goes first again).

Every operation is O(1); nothing here knows what a message is beyond its campaign key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    __slots__ = ("_key", "_queues", "_ring", "_len")

    def __init__(self, key: Callable[[T], Hashable]) -> None:
        self._key = key
        self._queues: dict[Hashable, deque[T]] = {}
        self._ring: deque[Hashable] = deque()  # campaigns with mail, next to serve first
        self._len = 0

    def append(self, item: T) -> None:
        key = self._key(item)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._ring.append(key)
        queue.append(item)
        self._len += 1

    def appendleft(self, item: T) -> None:
        key = self._key(item)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        else:
            self._ring.remove(key)
        self._ring.appendleft(key)
        queue.appendleft(item)
        self._len += 1

    def popleft(self) -> T:
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        key = self._ring.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._ring.append(key)  # its next message waits for the others' turns
        else:
            del self._queues[key]
        self._len -= 1
        return item

    def pop(self) -> T:
        """Take an item from the tail of the biggest campaign (to shed load fairly)."""
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        key = max(self._queues, key=lambda k: len(self._queues[k]))
        queue = self._queues[key]
        item = queue.pop()
        if not queue:
            del self._queues[key]
            self._ring.remove(key)
        self._len -= 1
        return item

    def clear(self) -> None:
        self._queues.clear()
        self._ring.clear()
        self._len = 0

    def count(self, key: Hashable) -> int:
        """How many items the campaign ``key`` has queued."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    @property
    def campaigns(self) -> int:
        return len(self._ring)

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Every item, campaign by campaign (for draining, not for serving)."""
        for queue in self._queues.values():
            yield from queue
