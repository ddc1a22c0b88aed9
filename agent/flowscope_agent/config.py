"""Where the agent reports and how much it may hold, from the environment (or attach()'s arguments).

FLOWSCOPE_URL             the console's base URL; spans go to FLOWSCOPE_URL + "/v1/traces"
FLOWSCOPE_TOKEN           an API token of the console's agent role (manage.py create_token --role agent)
FLOWSCOPE_APP             the app's name in the console (default: the Celery app's main name)
FLOWSCOPE_MAX_QUEUE       spans held per process while the console is slow or away (2048);
                          past it new spans are dropped and counted, a task never waits
FLOWSCOPE_EXPORT_DELAY_MS how long spans gather before a batch is sent (2000; a batch of 512 goes
                          at once): each request costs the console several milliseconds of CPU
                          whatever it carries
FLOWSCOPE_EXPORT_TIMEOUT  seconds one batch may take, retries included (5)
FLOWSCOPE_REQUEUE_POLL_S  how often a worker asks the console for requeue and revoke orders (1)
FLOWSCOPE_HEARTBEAT_S     how often a worker's main process reports its state (5); the console
                          shows a worker offline after LIVE_WORKER_TIMEOUT_S (30) without one
FLOWSCOPE_LIVE_TASKS      1 (default) reports every task's state changes for the live task list;
                          0 keeps to spans, dead letters and heartbeats
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting the agent cannot work with; the message names it."""


@dataclasses.dataclass(frozen=True)
class Config:
    url: str
    token: str
    app_name: str
    max_queue: int
    export_delay_ms: int
    export_timeout: float
    requeue_poll_s: float = 1.0
    heartbeat_s: float = 5.0
    live: bool = True

    @property
    def endpoint(self) -> str:
        return self.url + "/v1/traces"


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw} must be at least {minimum:g}")
    return value


def read(env: Mapping[str, str] | None = None, **given: str | None) -> Config:
    """The configuration from `env` (os.environ by default), with attach()'s arguments first."""
    env = os.environ if env is None else env
    url = (given.get("url") or env.get("FLOWSCOPE_URL", "")).strip().rstrip("/")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"FLOWSCOPE_URL={url!r} is not an http(s) URL; give the console's base URL, e.g. https://flowscope.example.com")
    return Config(
        url=url,
        token=(given.get("token") or env.get("FLOWSCOPE_TOKEN", "")).strip(),
        app_name=(given.get("app_name") or env.get("FLOWSCOPE_APP", "")).strip(),
        max_queue=int(_number(env, "FLOWSCOPE_MAX_QUEUE", 2048, minimum=1)),
        export_delay_ms=int(_number(env, "FLOWSCOPE_EXPORT_DELAY_MS", 2000, minimum=1)),
        export_timeout=_number(env, "FLOWSCOPE_EXPORT_TIMEOUT", 5, minimum=0.1),
        requeue_poll_s=_number(env, "FLOWSCOPE_REQUEUE_POLL_S", 1, minimum=0.05),
        heartbeat_s=_number(env, "FLOWSCOPE_HEARTBEAT_S", 5, minimum=0.1),
        live=_flag(env, "FLOWSCOPE_LIVE_TASKS", True),
    )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not 1 or 0")
