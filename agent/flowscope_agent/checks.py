"""Start-up checks: what the agent needs that the app has not turned on, said once, never changed.

The agent listens; it does not reconfigure. Where the app's configuration keeps the agent from
seeing something, it logs a warning naming the setting and what is lost, and leaves it as it is.
Old-style setting names (CELERY_ALWAYS_EAGER) reach app.conf under their new names, so one look
covers both. Both task protocols carry the agent's headers (protocol 1 under request.headers).
"""

from __future__ import annotations

import logging
from typing import Any

from flowscope_agent.config import Config

log = logging.getLogger("flowscope_agent")


def warnings_for(config: Config, app: Any, *, settings_too: bool = True) -> list[str]:
    """What this configuration keeps from the console, one sentence each (the agent's own
    settings too unless `settings_too` is off: said once per process, at attach)."""
    found = []
    if settings_too and not config.url:
        found.append("FLOWSCOPE_URL is not set: spans are made but sent nowhere; set it to the console's base URL")
    elif settings_too and not config.token:
        found.append("FLOWSCOPE_TOKEN is not set: a console in production refuses spans without an agent token (manage.py create_token --name N --role agent)")
    conf = getattr(app, "conf", None)
    if conf is not None and conf.get("task_always_eager"):
        found.append("task_always_eager is on: tasks run in the caller without being published, so no send spans and no queue wait")
    return found


def announce(config: Config, app: Any, *, settings_too: bool = True) -> None:
    for warning in warnings_for(config, app, settings_too=settings_too):
        log.warning("flowscope-agent: %s", warning)
    if config.url:
        log.info("flowscope-agent: reporting %s to %s", getattr(app, "main", None) or "this app", config.endpoint)
