"""Real processes for the tests (Celery workers, the collector, a web server): thin classes over
the one supervisor (tooling/processes.py), on the test database and the run's Redis."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings

from flows.core.registry import catalog
from tests.support import REPO
from tooling.database import database_url_for_children
from tooling.processes import START_TIMEOUT, STOP_TIMEOUT, Child, LogLine, Supervisor

# The catalogs the tests' workers load (and the session worker consumes from).
TEST_MODULES = "examples.demo.catalog,tests.flows_under_test"
# Queues the session worker leaves alone: back-pressure backlogs must stay full, the crash
# saga gets a worker of its own to kill, the competing consumers test brings its own, and the
# dropped-connections tests one whose connections they drop.
NOT_FOR_SESSION_WORKER = {"t.backlog.raise", "t.backlog.block", "t.sagas.crash", "t.work", "t.drops"}


def worker_database_url() -> str:
    return database_url_for_children()


class ManagedProcess:
    """A real process of ours in a process group of its own, logging to a file of its own;
    started once its log shows `ready_marker` (an empty marker: at once)."""

    def __init__(self, name: str, args: list[str], *, ready_marker: str, extra_env: dict[str, str] | None = None, command: list[str] | None = None) -> None:
        self.name = name
        self.args = args
        self.command = command or [sys.executable, "manage.py"]
        self.ready_marker = ready_marker
        self.extra_env = extra_env or {}
        self.supervisor = Supervisor(log_dir=Path(tempfile.mkdtemp(prefix="flowscope-proc-")), cwd=REPO)
        self.log_path = self.supervisor.log_path(name)
        self.child: Child | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.popen if self.child is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> ManagedProcess:
        """Start it and wait until it is ready; FailedToStart, with its log's tail, otherwise."""
        env = {
            "DATABASE_URL": worker_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "FLOWS_MODULES": TEST_MODULES,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        ready = LogLine(re.escape(self.ready_marker)) if self.ready_marker else None
        self.child = self.supervisor.start(self.name, [*self.command, *self.args], ready=ready, timeout=timeout, env=env)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole group, pool children included: nothing gets to clean up."""
        if self.name in self.supervisor.children:
            self.supervisor.kill(self.name)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """TERM the group, KILL what is left of it after `timeout`."""
        self.supervisor.stop(timeout)


class Worker(ManagedProcess):
    """A real Celery worker: `concurrency` prefork children on `queues`."""

    def __init__(self, name: str, queues: list[str], *, concurrency: int = 2, extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.node = f"{name}@{socket.gethostname()}"
        command = ["worker", "--queues", ",".join(queues), "--concurrency", str(concurrency), "--name", self.node, *(args or [])]
        super().__init__(name, command, ready_marker=" ready.", extra_env=extra_env)


def session_queues() -> list[str]:
    """Only the queues of the catalogs the session worker loads: a test may import another
    catalog (the benchmark's, the lab's, the reliability suite's) whose handlers it lacks."""
    loaded = set(TEST_MODULES.split(","))
    mine = {h.queue for h in catalog.handlers.values() if h.fn.__module__ in loaded} - NOT_FOR_SESSION_WORKER
    return sorted(mine) + ["flows.control"]
