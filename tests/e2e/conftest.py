"""Fixtures for tests that drive real processes: the broker the workers use, the demo data
committed for them, the fake model server and the desk_worker processes themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from django.db import connection
from django_q.brokers import get_broker
from django_q.conf import Conf

from desk.cluster import SupervisedORM, SupervisedRedis
from desk.demo import seed_demo
from tests.e2e.support import database_url_of_this_process
from tests.e2e.workers import Workers, worker_env
from tests.fakes.openai_server import FakeOpenAIServer

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def broker(request, monkeypatch) -> dict[str, str | None]:
    """Point this process's django-q2 at the broker the workers will use; return its env."""
    if getattr(request, "param", "orm") == "orm":
        monkeypatch.setattr(Conf, "BROKER_CLASS", "desk.cluster.SupervisedORM")
        monkeypatch.setattr(Conf, "ORM", "default")
        assert isinstance(get_broker(), SupervisedORM)
        return {"REDIS_URL": None}
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis at {REDIS_TEST_URL} is not reachable: {exc}"
        if os.environ.get("CI") or os.environ.get("REDIS_TEST_URL"):
            pytest.fail(message)
        pytest.skip(message)
    client.flushdb()
    request.addfinalizer(client.flushdb)
    monkeypatch.setattr(Conf, "BROKER_CLASS", "desk.cluster.SupervisedRedis")
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", REDIS_TEST_URL)
    assert isinstance(get_broker(), SupervisedRedis)
    return {"REDIS_URL": REDIS_TEST_URL}


@pytest.fixture
def demo(transactional_db):
    """The demo data, committed so the workers see it."""
    seed_demo()


@pytest.fixture
def model(fake_openai: FakeOpenAIServer) -> FakeOpenAIServer:
    """The fake model server the workers call (tests set its latency)."""
    return fake_openai


@pytest.fixture
def worker_settings() -> dict[str, str]:
    """Extra environment for every worker of a test (override in a test module)."""
    return {}


@pytest.fixture
def workers(demo, broker, model, worker_settings, tmp_path) -> Iterator[Workers]:
    """Start desk_workers with `workers.start(name, **env)`; every one is stopped (then its
    process group killed) afterwards, and its output printed (shown when the test failed)."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    model_env = {
        "DESK_LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "test-key",
    }
    base_env = worker_env(
        database_url_of_this_process(), broker, **{**model_env, **worker_settings}
    )
    started = Workers(var_dir, base_env)
    yield started
    started.stop_all()
    connection.close()  # in case the test restarted PostgreSQL under it
