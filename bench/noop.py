"""Bare django-q2 tasks for the baselines, importable by the cluster as `bench.noop.*`.

They touch Redis only (never the database), so a baseline task costs what django-q2 itself
costs. The Redis URL comes from BENCH_REDIS_URL, which bench.common sets for the cluster.
"""

from __future__ import annotations

import os
import time

import redis

TICKS = "bench:ticks"
STAMPS = "bench:stamps"

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def noop() -> None:
    """Nothing at all."""


def tick() -> None:
    """Count one finished task (the throughput baseline reads the counter)."""
    _redis().incr(TICKS)


def stamp(token: str) -> None:
    """Record when this task started (the latency baseline compares it with the enqueue)."""
    _redis().hset(STAMPS, token, repr(time.time()))
