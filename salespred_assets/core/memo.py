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
    never waits for it; no caller ever sees a value older than ``ttl_s``...

    ...unless ``stale_s`` is given: when a refresh fails (the database is down), the last value is served,
    with a warning, while it is younger than ``stale_s``; for ``ttl_s`` after a failure callers get it
    without retrying, so an outage does not cost every request the database's timeout.
    """

    def __init__(self, ttl_s: float, *, refresh_ahead: bool = False, stale_s: float | None = None) -> None:
        self.ttl_s = ttl_s
        self.refresh_ahead = refresh_ahead
        self.stale_s = stale_s
        self._failed: dict[Hashable, float] = {}  # key -> when its last refresh failed
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
            self._failed.pop(key, None)
        return value

    def _stale(self, key: Hashable, *, failed_within: float | None) -> tuple[float, T] | None:
        """The last value when it may stand in for a failed refresh (younger than ``stale_s``). With
        ``failed_within``, only while the last refresh failed, at most that many seconds ago."""
        if self.stale_s is None:
            return None
        now = time.monotonic()
        with self._lock:
            hit, failed = self._values.get(key), self._failed.get(key)
        if hit is None or now - hit[0] >= self.stale_s:
            return None
        if failed_within is not None and (failed is None or now - failed >= failed_within):
            return None
        return hit

    def _compute_or_stale(self, key: Hashable, compute: Callable[[], T]) -> T:
        try:
            return self._compute(key, compute)
        except Exception as exc:
            stale = self._stale(key, failed_within=None)
            if stale is None:
                raise
            with self._lock:
                self._failed[key] = time.monotonic()
            log.warning("refresh of %r failed (%s); serving the value read %.0f s ago", key,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                        time.monotonic() - stale[0])
            return stale[1]

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
        """The value when it is fresh (refreshed ahead as :meth:`get` does), or standing in after a failed
        refresh; None instead of computing it."""
        hit = self._fresh_hit(key, compute) or self._stale(key, failed_within=self.stale_s)
        return hit[1] if hit is not None else None

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        # Just after a failed refresh, the last value stands in without asking the database again.
        hit = self._fresh_hit(key, compute) or self._stale(key, failed_within=self.ttl_s)
        if hit is not None:
            return hit[1]
        with self._lock:
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            hit = self._hit(key) or self._stale(key, failed_within=self.ttl_s)  # another caller may have just tried
            return hit[1] if hit is not None else self._compute_or_stale(key, compute)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._failed.clear()
