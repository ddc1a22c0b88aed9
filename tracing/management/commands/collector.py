from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string

from tracing.collector import Collector


class Command(BaseCommand):
    help = "Drain the span sink into the database and keep the flow graph's aggregates, until stopped."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        collector = Collector()
        collector.ensure_group()
        # Work that belongs beside the collector (the console's live broadcaster), named in settings
        # so that tracing does not import the console.
        for path in settings.TRACING_COLLECTOR_THREADS:
            import_string(path)(stop)
        self.stdout.write(f"collector {collector.name} ready", ending="\n")
        self.stdout.flush()
        collector.run(stop)
        self.stdout.write(f"collector stopped after storing {collector.stored} spans")
