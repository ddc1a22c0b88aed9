"""Test set-up: a private Redis for the run, real Celery workers on the test database.

Nothing here reads state a previous run left behind: Redis is new for every run, the test
database is created by pytest-django, and each test starts with the engine's keys cleared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parent.parent
TEST_MODULES = "examples.demo.catalog,tests.flows_under_test"
# Queues the session worker leaves alone: back-pressure backlogs must stay full, the crash
# saga gets a worker of its own to kill, and the competing consumers test brings its own.
NOT_FOR_SESSION_WORKER = {"t.backlog.raise", "t.backlog.block", "t.sagas.crash", "t.work"}

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    from tooling.devredis import RedisServer

    server = RedisServer().start()
    config._flowscope_redis = server  # type: ignore[attr-defined]
    os.environ["REDIS_URL"] = server.url
    settings.REDIS_URL = settings.CELERY_BROKER_URL = server.url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [server.url]
    from console.celery import app

    app.conf.broker_url = server.url

    import tests.flows_under_test  # noqa: F401 - declares the test catalog
    from flows.patterns import check_catalog

    check_catalog()


def pytest_unconfigure(config: pytest.Config) -> None:
    server = getattr(config, "_flowscope_redis", None)
    if server is not None:
        server.stop()


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
        time.sleep(interval)


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
    for queue in NOT_FOR_SESSION_WORKER:
        redis.delete(queue)
    yield


def worker_database_url() -> str:
    from tooling.database import database_url_for_children

    return database_url_for_children()


class ManagedProcess:
    """A real process of ours (a worker, the collector) in a process group of its own, on the
    test database and the run's Redis; started when its log shows `ready_marker`."""

    def __init__(self, name: str, args: list[str], *, ready_marker: str, extra_env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        self.name = name
        self.args = args
        self.command = command or [sys.executable, "manage.py"]
        self.ready_marker = ready_marker
        self.extra_env = extra_env or {}
        self.log_path = Path(tempfile.mkdtemp(prefix="flowscope-proc-")) / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ManagedProcess:
        env = {
            **os.environ,
            "DATABASE_URL": worker_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "FLOWS_MODULES": TEST_MODULES,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - open while the process runs
        self.process = subprocess.Popen([*self.command, *self.args], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._ready(), timeout=timeout, interval=0.1, what=f"{self.name} to be ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        return self.ready_marker in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole group, pool children included: nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # any orphaned pool child
        except ProcessLookupError:
            pass
        self.log.close()


class Worker(ManagedProcess):
    """A real Celery worker: `concurrency` prefork children on `queues`."""

    def __init__(self, name: str, queues: list[str], *, concurrency: int = 2, extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.node = f"{name}@{socket.gethostname()}"
        command = ["worker", "--queues", ",".join(queues), "--concurrency", str(concurrency), "--name", self.node, *(args or [])]
        super().__init__(name, command, ready_marker=" ready.", extra_env=extra_env)


def session_queues() -> list[str]:
    from flows.core.registry import catalog

    # Only the queues of the catalogs the session worker loads: a test may import another catalog
    # (the benchmark's, the lab's, the reliability suite's) whose handlers that worker lacks.
    loaded = set(TEST_MODULES.split(","))
    mine = {h.queue for h in catalog.handlers.values() if h.fn.__module__ in loaded} - NOT_FOR_SESSION_WORKER
    return sorted(mine) + ["flows.control"]


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
