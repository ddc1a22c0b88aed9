"""Test set-up: a private Redis for the run, real Celery workers on the test database, on Redis
or (BROKER=rabbitmq) on a RabbitMQ vhost of the run's own.

Nothing here reads state a previous run left behind: Redis and the vhost are new for every run, the test
database is created by pytest-django, and each test starts with the engine's keys cleared.
Only fixtures and hooks live here; the helpers tests share are in tests/support/.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.support.brokers import purge
from tests.support.workers import NOT_FOR_SESSION_WORKER, ManagedProcess, Worker, session_queues

# A test that uses one of these fixtures starts real processes (or a browser, or a server
# thread): it is marked `worker`, so `-m "not worker"` leaves it out.
PROCESS_FIXTURES = {"worker", "collector", "start_worker", "chaos_worker", "web", "browser", "page", "live_server"}
# Whole folders and modules whose tests start processes themselves (subprocess, the lab's and
# the bench's commands), beside the modules that say so with their own `pytestmark`.
TESTS = Path(__file__).resolve().parent
PROCESS_PATHS = [TESTS / "reliability", TESTS / "browser", TESTS / "test_lab.py", TESTS / "test_bench_command.py", TESTS / "test_settings.py"]


def pytest_configure(config: pytest.Config) -> None:
    from tooling.devredis import RedisServer

    server = RedisServer().start()
    config._flowscope_redis = server  # type: ignore[attr-defined]
    os.environ["REDIS_URL"] = server.url
    settings.REDIS_URL = server.url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [server.url]
    from console.celery import app
    from flows.core.brokers import RABBITMQ, broker_kind

    if broker_kind() == RABBITMQ:
        # A vhost of the run's own on the machine's RabbitMQ (started if none answers); the
        # workers the tests start inherit its URL.
        from tooling.rabbitmq import Vhost

        vhost = Vhost(settings.CELERY_BROKER_URL, prefix="flowscope_test").create()
        config._flowscope_vhost = vhost  # type: ignore[attr-defined]
        broker_url = vhost.url
    else:
        broker_url = server.url
    os.environ["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL = app.conf.broker_url = broker_url

    import tests.flows_under_test  # noqa: F401 - declares the test catalog
    from flows.patterns import check_catalog

    check_catalog()


def pytest_unconfigure(config: pytest.Config) -> None:
    vhost = getattr(config, "_flowscope_vhost", None)
    if vhost is not None:
        vhost.delete()
    server = getattr(config, "_flowscope_redis", None)
    if server is not None:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `worker` every test that starts processes: by the fixtures it uses (their whole
    closure, so a fixture built on `worker` counts) or by where it lives."""
    for item in items:
        path = Path(str(item.path))
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or any(path == p or p in path.parents for p in PROCESS_PATHS):
            item.add_marker(pytest.mark.worker)


@pytest.fixture(autouse=True)
def clean_engine_keys() -> Iterator[None]:
    """Each test starts with no engine keys (faults, counters, statuses) and empty backlogs."""
    from flows.produce.backpressure import backpressure
    from tracing.redis import get_redis

    backpressure.forget()
    redis = get_redis()
    for name in redis.scan_iter(match="flows:*", count=1000):
        if not name.startswith(b"flows:spans"):  # the span sink belongs to the running collector
            redis.delete(name)
    purge(*NOT_FOR_SESSION_WORKER)
    yield


@pytest.fixture(scope="session")
def worker(django_db_setup: Any) -> Iterator[Worker]:
    """One worker node, two pool processes, on every queue but the ones tests keep to themselves."""
    node = Worker("session", session_queues(), concurrency=2).start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def collector(django_db_setup: Any) -> Iterator[ManagedProcess]:
    """The span collector, as `make demo` runs it; tests may stop and start it again."""
    process = ManagedProcess("collector", ["collector"], ready_marker=" ready").start()
    yield process
    process.stop()


@pytest.fixture
def start_worker(django_db_setup: Any) -> Iterator[Callable[..., Worker]]:
    """Start extra workers for one test; each is stopped (or was killed) by the end of it."""
    started: list[Worker] = []

    def start(name: str, queues: list[str], **options: Any) -> Worker:
        node = Worker(name, queues, **options).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
