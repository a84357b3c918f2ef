"""A small time-bounded memo for values that change rarely but are read on every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Expiring(Generic[T]):
    """Remembers each key's value for ``ttl_s`` seconds; ``clear()`` forgets at once."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = compute()
        with self._lock:
            self._values[key] = (now, value)
        return value

    def fresh(self, key: Hashable) -> bool:
        with self._lock:
            hit = self._values.get(key)
        return hit is not None and time.monotonic() - hit[0] < self.ttl_s

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
