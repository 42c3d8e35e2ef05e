"""Bare django-q2 tasks for the baselines, importable by the cluster as `bench.noop.*`.

They touch Redis only (never the database), so a baseline task costs what django-q2 itself
costs; `model_call` adds one model call through the project's provider, as a design with a
task (a process) per model call would make it. The Redis URL comes from BENCH_REDIS_URL,
which bench.common sets for the cluster.
"""

from __future__ import annotations

import os
import time

import redis

TICKS = "bench:ticks"
STAMPS = "bench:stamps"
CALLS = "bench:model_calls"

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


def model_call(index: int) -> None:
    """One model call that holds its worker process until the answer is in (the process-per-
    call design), then count it. The provider is the cluster's (DESK_LLM_PROVIDER)."""
    import asyncio

    from bench.common import NOOP_OUTPUT
    from desk.providers import aclose_providers, get_provider
    from desk.providers.base import ModelRequest

    async def call() -> None:
        try:
            request = ModelRequest(
                prompt=f"Summarise in one line: call {index}",
                output_schema=NOOP_OUTPUT,
                model="gpt-bench",
            )
            await get_provider().acomplete(request)
        finally:
            await aclose_providers()

    asyncio.run(call())
    _redis().incr(CALLS)
