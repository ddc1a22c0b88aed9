"""Start a Celery worker on the queues the catalog declares (or the ones named)."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import (
    current_app as app,  # the project's app (console/celery.py), without importing console
)
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows.core.registry import catalog
from tracing import setup

CONTROL_QUEUE = "flows.control"


class Command(BaseCommand):
    help = "Run a Celery worker for Flowscope's handlers: every declared queue unless --queues names some."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queues", default="", help="comma-separated queues (default: all declared, plus flows.control)")
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
        parser.add_argument("--name", default="", help="node name, e.g. worker1@%%h")
        parser.add_argument("--beat", action="store_true", help="also run the periodic sweeper (one worker only)")
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--max-tasks-per-child", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        setup.set_default_service("flowscope-worker")
        declared = set(catalog.queue_names()) | {CONTROL_QUEUE}
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()] or sorted(declared)
        unknown = sorted(set(queues) - declared)
        if unknown:
            raise CommandError(f"no handler consumes {unknown}; declared queues: {sorted(declared)}")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        argv = ["worker", "-Q", ",".join(queues), "-c", str(options["concurrency"]), "-P", options["pool"], "-l", options["loglevel"], "-O", "fair"]
        if options["name"]:
            node = options["name"].replace("%h", socket.gethostname())
            argv += ["-n", node]
            os.environ["FLOWSCOPE_NODE"] = node  # the pool children name their heartbeat with it
        if options["beat"]:
            argv += ["-B", "-s", "var/celerybeat-schedule"]
        if options["max_tasks_per_child"]:
            argv += ["--max-tasks-per-child", str(options["max_tasks_per_child"])]
        app.worker_main(argv)
