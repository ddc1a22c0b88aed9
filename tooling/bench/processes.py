"""The long-lived processes some measurements need beside the workers (the web server, the
collector, Flower), started and stopped by the one supervisor (tooling/processes.py), and their
resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from django.conf import settings

from tooling.processes import START_TIMEOUT, Check, Child, FailedToStart, LogLine, http_answers, spawn, wait_ready
from tooling.processes import stop as stop_children

MIB = 1024 * 1024
__all__ = ["MIB", "cpu_seconds", "rss_mib", "start", "start_collector", "start_daphne", "stop", "wait_http"]

# The processes started here, by pid: a failure message quotes the log of the one that failed.
_started: dict[int, Child] = {}


def _child(process: subprocess.Popen[bytes]) -> Child:
    """The supervisor's view of a process (one started elsewhere, a worker say, has no log here)."""
    return _started.get(process.pid) or Child(" ".join(map(str, process.args[:4])), process, None)  # type: ignore[index]


def start(name: str, command: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in a group of its own (stop() ends it with its children), logging to log_dir."""
    child = spawn(name, command, log_path=log_dir / f"bench-{name}.log", env={**os.environ, "REDIS_URL": settings.REDIS_URL, **(env or {})}, cwd=settings.BASE_DIR)
    _started[child.pid] = child
    return child.popen


def stop(process: subprocess.Popen[bytes]) -> None:
    """TERM its group, KILL what is left of it after the supervisor's deadline."""
    stop_children([_child(process)])
    _started.pop(process.pid, None)


def start_collector(*, log_dir: Path) -> subprocess.Popen[bytes]:
    """The collector, once it says it is ready: its start-up (imports, Django's checks: about two
    seconds of CPU here) neither competes with the first round measured nor counts in its CPU."""
    collector = start("collector", [sys.executable, "manage.py", "collector"], log_dir=log_dir)
    try:
        wait_ready({_child(collector): LogLine(r"^collector \S+ ready$")})
    except FailedToStart:
        stop(collector)  # not ready in time: not left running behind the bench's error
        raise
    return collector


def start_daphne(port: int, *, log_dir: Path) -> subprocess.Popen[bytes]:
    # The benchmark talks to it over plain http on 127.0.0.1, whatever the deployment's settings say.
    return start(
        "web",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
        log_dir=log_dir,
        env={"ALLOWED_HOSTS": "127.0.0.1,localhost", "SECURE_SSL_REDIRECT": "0"},
    )


def wait_http(url: str, process: subprocess.Popen[bytes], *, timeout: float = START_TIMEOUT) -> None:
    """Until url answers (any HTTP status); FailedToStart (a RuntimeError, with the process's
    log tail) if the process dies or time runs out."""
    wait_ready({_child(process): Check(f"{url} answering", lambda: http_answers(url, any_status=True))}, timeout=timeout)


def rss_mib(pid: int, *, children: bool = True) -> float:
    """Resident memory of a process, with its descendants (a prefork pool's children) if asked."""
    try:
        main = psutil.Process(pid)
        family = [main, *main.children(recursive=True)] if children else [main]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in family:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:  # a pool child replaced meanwhile
            pass
    return total / MIB


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process and its descendants (a prefork pool's children) have used."""
    try:
        main = psutil.Process(pid)
        family = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in family:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:  # a pool child replaced meanwhile
            pass
    return total
