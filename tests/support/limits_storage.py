"""Redis under a key prefix of the test's own, and a check that every key is gone afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from limits.storage import RedisStorage, Storage


def unique_prefix() -> str:
    return f"ami-test-{uuid.uuid4().hex[:12]}"


def redis_keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


def close_storage(storage: Storage) -> None:
    """Delete the storage's keys (``limits`` namespaces them as ``<key_prefix>:…``) and close its pool."""
    storage.reset()
    if isinstance(storage, RedisStorage):
        storage.storage.close()


@contextmanager
def redis_storage(url: str) -> Iterator[RedisStorage]:
    prefix = unique_prefix()
    storage = RedisStorage(url, key_prefix=prefix)
    try:
        yield storage
    finally:
        close_storage(storage)
        assert redis_keys(url, prefix) == [], "test keys left behind in Redis"
