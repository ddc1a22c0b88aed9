"""flowscope-agent: attach Flowscope to a Celery app you already run.

Without a code change: ``flowscope-agent celery -A proj worker -l info`` (and
``flowscope-agent python producer.py`` for a process that only sends). In code, once, where
the app is made::

    import flowscope_agent
    flowscope_agent.attach(app)

FLOWSCOPE_URL (the console's base URL) and FLOWSCOPE_TOKEN (an API token of the console's
agent role) say where it reports; see flowscope_agent.config for the rest. It needs Celery and
the OpenTelemetry SDK, never Django or Flowscope's database.

The fork rule: spans are sent by a provider of each process's own, made in worker_process_init
(and by any process on first use after a fork) and flushed on worker_process_shutdown or at exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from celery import signals

from flowscope_agent import checks, config
from flowscope_agent.export import VERSION
from flowscope_agent.hooks import Agent

__all__ = ["attach", "detach", "stats", "__version__"]
__version__ = VERSION
log = logging.getLogger("flowscope_agent")
_lock = threading.Lock()
_agent: Agent | None = None


def attach(app: Any = None, *, url: str | None = None, token: str | None = None, app_name: str | None = None) -> Agent:
    """Connect the agent to Celery's signals, once per process (a second call returns the first agent).

    `app` names the app in the console and is checked at start-up; without it, the current app
    is. Arguments left out are read from FLOWSCOPE_URL, FLOWSCOPE_TOKEN and FLOWSCOPE_APP.
    Raises config.ConfigError for a setting it cannot work with (a URL that is not http(s)).
    """
    global _agent
    with _lock:
        if _agent is not None:
            if app is not None and _agent.app is None:
                _agent.app = app
            return _agent
        agent = Agent(config.read(url=url, token=token, app_name=app_name), app)
        agent.connect()
        signals.celeryd_after_setup.connect(_announce_worker, weak=False)
        atexit.register(agent.shutdown)
        _agent = agent
    checks.announce(agent.config, None)  # the agent's own settings; the app's follow once it is configured
    if app is not None:
        if getattr(app, "configured", True):
            checks.announce(agent.config, app, settings_too=False)
        else:  # reading app.conf now would load the configuration early: wait for the app to do it
            app.on_after_configure.connect(lambda sender, **_: checks.announce(agent.config, sender, settings_too=False), weak=False)
    return agent


def _announce_worker(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker says what the agent will miss as it starts (its logging set up by then), with the app it loaded."""
    agent = _agent
    if agent is not None and agent.app is None:
        try:
            checks.announce(agent.config, getattr(instance, "app", None), settings_too=False)
        except Exception:  # start-up advice must never stop a worker
            log.exception("flowscope-agent: the start-up check failed")


def detach() -> dict[str, int] | None:
    """Disconnect every signal, flush this process's spans, and give their counts."""
    global _agent
    with _lock:
        agent, _agent = _agent, None
    if agent is None:
        return None
    signals.celeryd_after_setup.disconnect(_announce_worker)
    atexit.unregister(agent.shutdown)
    return agent.disconnect()


def stats() -> dict[str, int]:
    """This process's span counts so far: ended, exported, failed, dropped, held."""
    agent = _agent
    return agent.stats() if agent is not None else {"ended": 0, "exported": 0, "failed": 0, "dropped": 0, "held": 0}
