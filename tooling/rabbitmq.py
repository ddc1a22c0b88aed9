"""Finding or starting a RabbitMQ for the demo, the bench and the tests, and a vhost of their own.

A run's vhost keeps its queues, exchanges and messages apart from every other run's on the same
broker, and goes with everything in it when the run ends. Vhosts are made with `rabbitmqctl`
(no management plugin needed), which talks to the node over Erlang distribution: it must run as
a user that holds the node's Erlang cookie (root, or the rabbitmq user, on Debian).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
CTL_TIMEOUT_SECONDS = 60


class RabbitMQUnavailable(RuntimeError):
    pass


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            return True
    except Exception:  # noqa: BLE001 - any failure to connect means "no"
        return False


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, parts.fragment))


def ensure_running(url: str = DEFAULT_URL, *, wait: float = 60.0) -> None:
    """Return when a RabbitMQ answers at `url`; start Debian's `rabbitmq-server` when none does
    and the URL is local; RabbitMQUnavailable, saying what to do, otherwise."""
    if answers(url):
        return
    host = urlsplit(url).hostname or ""
    server = shutil.which("rabbitmq-server") or ("/usr/sbin/rabbitmq-server" if os.path.exists("/usr/sbin/rabbitmq-server") else None)
    if host not in ("127.0.0.1", "localhost", "::1") or server is None:
        raise RabbitMQUnavailable(f"no RabbitMQ answers at {_safe(url)}; start one (Debian: apt install rabbitmq-server) or set CELERY_BROKER_URL to one that answers")
    subprocess.run([server, "-detached"], check=False, timeout=CTL_TIMEOUT_SECONDS, capture_output=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if answers(url):
            return
        time.sleep(0.5)
    raise RabbitMQUnavailable(f"started rabbitmq-server, but nothing answered at {_safe(url)} within {wait:g}s (see /var/log/rabbitmq)")


def _ctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        raise RabbitMQUnavailable(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:500]}")
    return done.stdout


def vhost_names() -> set[str]:
    """The vhosts of the local node (a run's own is checked gone after it with this)."""
    return {line.strip() for line in _ctl("list_vhosts", "--silent", "name").splitlines() if line.strip()}


class Vhost:
    """A vhost of one run's own on the broker at `url`, its user given every permission in it."""

    def __init__(self, url: str = DEFAULT_URL, *, prefix: str = "flowscope") -> None:
        self.base_url = url
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.url = with_vhost(url, self.name)

    def create(self) -> Vhost:
        ensure_running(self.base_url)
        _ctl("add_vhost", self.name)
        _ctl("set_permissions", "-p", self.name, urlsplit(self.base_url).username or "guest", ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        try:
            _ctl("delete_vhost", self.name)
        except (RabbitMQUnavailable, subprocess.TimeoutExpired, OSError):
            pass  # the broker is gone already, or the run is ending anyway: nothing to keep it for

    def __enter__(self) -> Vhost:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def _safe(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
