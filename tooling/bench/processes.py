"""The long-lived processes some measurements need beside the workers (the web server, the
collector, Flower), and their resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from django.conf import settings

from tooling.bench.throughput import stop

MIB = 1024 * 1024
__all__ = ["MIB", "rss_mib", "start", "start_collector", "start_daphne", "stop", "wait_http"]


def start(name: str, command: list[str], *, log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in a session of its own (stop() ends it with its children), logging to log_dir."""
    log = open(log_dir / f"bench-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(command, cwd=settings.BASE_DIR, env={**os.environ, "REDIS_URL": settings.REDIS_URL, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_collector(*, log_dir: Path) -> subprocess.Popen[bytes]:
    return start("collector", [sys.executable, "manage.py", "collector"], log_dir=log_dir)


def start_daphne(port: int, *, log_dir: Path) -> subprocess.Popen[bytes]:
    # The benchmark talks to it over plain http on 127.0.0.1, whatever the deployment's settings say.
    return start(
        "web",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
        log_dir=log_dir,
        env={"ALLOWED_HOSTS": "127.0.0.1,localhost", "SECURE_SSL_REDIRECT": "0"},
    )


def wait_http(url: str, process: subprocess.Popen[bytes], *, timeout: float = 60) -> None:
    """Until url answers (any HTTP status); RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - a local URL of our own
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode} before {url} answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


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
