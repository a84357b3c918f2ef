"""The request-path memo: one caller computes an expired value; a busy reader never waits for it."""

from __future__ import annotations

import threading
import time

from salespred_assets.core.memo import Expiring


def test_expired_value_is_computed_once_for_concurrent_callers():
    memo: Expiring[int] = Expiring(ttl_s=60)
    calls = []
    release = threading.Event()

    def slow() -> int:
        calls.append(1)
        release.wait(5)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(memo.get("k", slow))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert results == [42] * 8
    assert len(calls) == 1


def test_refresh_ahead_keeps_serving_while_a_background_read_replaces_the_value():
    memo: Expiring[int] = Expiring(ttl_s=1.0, refresh_ahead=True)
    version = iter(range(100))
    started = threading.Event()
    release = threading.Event()

    def read() -> int:
        value = next(version)
        if value == 1:  # the background refresh: hold it to show callers do not wait for it
            started.set()
            release.wait(5)
        return value

    assert memo.get("k", read) == 0
    time.sleep(0.6)                        # past half its life, not yet expired
    assert memo.get("k", read) == 0        # served at once; the refresh starts behind it
    assert started.wait(2)
    assert memo.get("k", read) == 0        # still the current value while the refresh runs
    release.set()
    deadline = time.monotonic() + 2
    seen = memo.get("k", read)
    while seen == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = memo.get("k", read)
    assert seen == 1  # the refreshed value, read once in the background


def test_peek_answers_only_from_memory():
    memo: Expiring[int] = Expiring(ttl_s=60)
    reads = []
    assert memo.peek("k", lambda: reads.append(1) or 1) is None
    assert reads == []
    assert memo.get("k", lambda: 5) == 5
    assert memo.peek("k", lambda: 6) == 5


def test_without_refresh_ahead_an_expired_value_is_read_again_and_errors_reach_the_caller():
    memo: Expiring[int] = Expiring(ttl_s=0.05)
    assert memo.get("k", lambda: 1) == 1
    time.sleep(0.1)
    assert memo.peek("k", lambda: 9) is None  # expired: peek does not read it again

    def broken() -> int:
        raise RuntimeError("database down")

    try:
        memo.get("k", broken)
    except RuntimeError as exc:
        assert "database down" in str(exc)
    else:
        raise AssertionError("the error was swallowed")
    assert memo.get("k", lambda: 2) == 2


def test_with_stale_s_a_failed_refresh_serves_the_last_value_and_waits_before_asking_again():
    memo: Expiring[int] = Expiring(ttl_s=0.05, stale_s=0.5)
    assert memo.get("k", lambda: 1) == 1
    time.sleep(0.1)
    attempts = []

    def broken() -> int:
        attempts.append(1)
        raise RuntimeError("database down")

    assert memo.get("k", broken) == 1      # the last value stands in for the failed refresh
    assert memo.peek("k", broken) == 1     # and pages that only look in memory see it too
    assert memo.get("k", broken) == 1
    assert attempts == [1]                 # just after a failure the database is not asked again
    time.sleep(0.1)
    assert memo.get("k", broken) == 1 and attempts == [1, 1]  # past ttl_s it is asked again
    time.sleep(0.5)                        # older than stale_s: the error reaches the caller
    try:
        memo.get("k", broken)
    except RuntimeError as exc:
        assert "database down" in str(exc)
    else:
        raise AssertionError("a value older than stale_s was served")
    assert memo.get("k", lambda: 2) == 2   # a successful read clears the failure


def test_with_stale_s_nothing_is_invented_when_nothing_was_ever_read():
    memo: Expiring[int] = Expiring(ttl_s=0.05, stale_s=60)

    def broken() -> int:
        raise RuntimeError("database down")

    try:
        memo.get("k", broken)
    except RuntimeError:
        pass
    else:
        raise AssertionError("no value was ever read, yet no error")
    assert memo.peek("k", broken) is None
