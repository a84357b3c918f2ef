"""A small time-bounded memo for values that change rarely but are read on every request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Expiring(Generic[T]):
    """Remembers each key's value for ``ttl_s`` seconds; ``clear()`` forgets at once.

    Single flight: when a value has expired, one caller computes it and the others wait for that
    result instead of all asking the database at once. With ``refresh_ahead``, a value past half its
    life is recomputed on a background thread while callers keep the current one, so a busy server
    never waits for it; no caller ever sees a value older than ``ttl_s``.
    """

    def __init__(self, ttl_s: float, *, refresh_ahead: bool = False) -> None:
        self.ttl_s = ttl_s
        self.refresh_ahead = refresh_ahead
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._refreshing: set[Hashable] = set()

    def _hit(self, key: Hashable) -> tuple[float, T] | None:
        with self._lock:
            hit = self._values.get(key)
        return hit if hit is not None and time.monotonic() - hit[0] < self.ttl_s else None

    def _compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        started = time.monotonic()  # the value is as old as the moment its read began
        value = compute()
        with self._lock:
            self._values[key] = (started, value)
        return value

    def _refresh(self, key: Hashable, compute: Callable[[], T]) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                self._compute(key, compute)
            except Exception as exc:  # noqa: BLE001 - the next caller past the TTL computes it and sees the error
                log.warning("background refresh of %r failed: %s", key, exc)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name="memo-refresh", daemon=True).start()

    def _fresh_hit(self, key: Hashable, compute: Callable[[], T]) -> tuple[float, T] | None:
        hit = self._hit(key)
        if hit is not None and self.refresh_ahead and time.monotonic() - hit[0] > self.ttl_s / 2:
            self._refresh(key, compute)
        return hit

    def peek(self, key: Hashable, compute: Callable[[], T]) -> T | None:
        """The value when it is fresh (refreshed ahead as :meth:`get` does); None instead of computing it."""
        hit = self._fresh_hit(key, compute)
        return hit[1] if hit is not None else None

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        hit = self._fresh_hit(key, compute)
        if hit is not None:
            return hit[1]
        with self._lock:
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            hit = self._hit(key)  # another caller may have just computed it
            return hit[1] if hit is not None else self._compute(key, compute)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
