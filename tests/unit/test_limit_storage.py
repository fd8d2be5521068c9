"""The single-process ``limits`` storage: counts and expiry exact without the stock storage's thread per sweep."""

from __future__ import annotations

import time
from pathlib import Path

from limits import RateLimitItemPerMinute
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from app.extensions import SweptMemoryStorage, make_limit_storage
from tests.conftest import make_settings


def test_memory_storage_is_the_swept_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/x.db")
    assert isinstance(make_limit_storage(settings), SweptMemoryStorage)


def test_hits_share_one_sweep_thread() -> None:
    storage = SweptMemoryStorage()
    storage.incr("k", 60)
    time.sleep(0.05)  # the stock storage's 10 ms sweep timer has fired and ended by now
    storage.incr("k", 60)
    sweeper = storage.timer
    assert sweeper.is_alive() and sweeper.daemon
    for _ in range(3):
        time.sleep(0.02)
        storage.incr("k", 60)
    assert storage.timer is sweeper  # the stock storage would have started a new thread for each of these
    assert storage.get("k") == 5


def test_expiry_is_exact_before_any_sweep() -> None:
    storage = SweptMemoryStorage()
    assert storage.incr("fixed", 0.05) == 1
    assert storage.incr("fixed", 0.05) == 2
    assert storage.acquire_entry("moving", 1, 0.05)  # type: ignore[arg-type]  # seconds; a float works
    assert not storage.acquire_entry("moving", 1, 0.05)  # type: ignore[arg-type]
    time.sleep(0.08)
    assert storage.get("fixed") == 0 and storage.incr("fixed", 0.05) == 1
    assert storage.acquire_entry("moving", 1, 0.05)  # type: ignore[arg-type]


def test_strategies_limit_as_before() -> None:
    storage = SweptMemoryStorage()
    item = RateLimitItemPerMinute(2)
    fixed, moving = FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage)
    assert [fixed.hit(item, "user", "1") for _ in range(3)] == [True, True, False]
    assert fixed.hit(item, "user", "2")
    assert [moving.hit(item, "mfa", "1") for _ in range(3)] == [True, True, False]
    assert not moving.test(item, "mfa", "1")
    moving.clear(item, "mfa", "1")
    assert moving.test(item, "mfa", "1")
