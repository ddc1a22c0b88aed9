"""manage.py watch_celery: an app whose workers cannot run flowscope-agent, seen through its events."""

from __future__ import annotations

import re
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows.operate.celery_events.watcher import Watcher, Writers
from flows.operate.celery_events.writers import write_deaths, write_spans, write_tasks, write_workers

APP_NAME = re.compile(r"^[\w.:@-]{1,100}$")  # as an agent's app name (console.api.agent)


class Command(BaseCommand):
    help = (
        "Watch a Celery app through its own events (workers started with -E): its tasks as spans, in the live task list "
        "and, when they fail, as dead letters that cannot be requeued exactly. Runs until stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--broker", required=True, help="the app's broker URL (redis://..., amqp://...)")
        parser.add_argument("--app", required=True, help="the name the console shows the app by (as FLOWSCOPE_APP for the agent)")
        parser.add_argument("--batch", type=int, default=500, help="items written at once (default 500)")
        parser.add_argument("--flush-seconds", type=float, default=1.0, help="write at least this often (default 1)")
        parser.add_argument("--check-seconds", type=float, default=20.0, help="after this long, say what the app's workers do not send (default 20)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not APP_NAME.match(options["app"]):
            raise CommandError(f"--app {options['app']!r}: 1 to 100 letters, digits and . : @ - _")
        if "://" not in options["broker"]:
            raise CommandError(f"--broker {options['broker']!r} is not a broker URL (redis://host:6379/0, amqp://user:pass@host:5672/vhost)")
        if options["batch"] < 1 or options["flush_seconds"] <= 0 or options["check_seconds"] <= 0:
            raise CommandError("--batch, --flush-seconds and --check-seconds must be above 0")
        watcher = Watcher(
            broker=options["broker"],
            app=options["app"],
            writers=Writers(spans=write_spans, tasks=write_tasks, workers=write_workers, deaths=write_deaths),
            batch=options["batch"],
            flush_seconds=options["flush_seconds"],
            check_seconds=options["check_seconds"],
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: watcher.stop.set())
        counts = watcher.run()
        self.stdout.write(f"watch_celery stopped: {counts.line()}")
