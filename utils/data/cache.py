"""A memory-bounded, least-recently-used cache for decoded source images.

Each loader worker process holds its own cache (the sample maker, and with it the cache, is copied into
every worker), so an image is decoded at most once per worker as long as the cache is large enough, and
the memory a worker uses for images never exceeds the configured limit.
"""

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Maps keys to values loaded on demand; evicts the least recently used values beyond a byte limit.

    Args:
        max_bytes: Upper bound on the summed sizes of the cached values, in bytes. 0 disables caching
            (every lookup loads again). A single value larger than the limit is returned but not kept.
        size_of: Function giving the size of a value in bytes.

    Raises:
        ValueError: If `max_bytes` is negative.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Summed size of the values held now, in bytes."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """Returns the cached value of `key`, calling `load()` and caching its result on a miss.

        Args:
            key: Cache key (e.g. an image id).
            load: Called without arguments to produce the value when `key` is not cached.

        Returns:
            The value for `key`; it becomes the most recently used entry.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[0]
        value = load()
        size = int(self._size_of(value))
        if size <= self.max_bytes:
            self._entries[key] = (value, size)
            self._total += size
            while self._total > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._total -= evicted_size
        return value

    def clear(self) -> None:
        """Drops every cached value."""
        self._entries.clear()
        self._total = 0
