"""The engine's Redis client: one connection pool per process (redis-py resets it after fork)."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def redis_at(url: str) -> redis.Redis:
    """One client per URL and process (the engine's own Redis, or another, such as a broker's)."""
    # No health_check_interval: its PING-before-use raced with threads sharing the pool (seen as
    # "I/O operation on closed file" in the load generator); a dead connection fails its command
    # and is replaced from the pool anyway.
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def get_redis() -> redis.Redis:
    return redis_at(settings.REDIS_URL)


def key(*parts: str) -> str:
    """Every key the engine owns starts with "flows:", so tests and operators can find them."""
    return "flows:" + ":".join(parts)
