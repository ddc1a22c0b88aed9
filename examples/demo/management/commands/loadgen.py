from __future__ import annotations

import signal
import threading
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from examples.demo.loadgen import LoadGenerator, parse_mix
from tracing import setup


class Command(BaseCommand):
    help = "Send the demo flows at --rate messages per second, with a progress line each second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rate", type=float, default=20.0, help="flows started per second")
        parser.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until Ctrl-C")
        parser.add_argument("--mix", default="", help="weights, e.g. order=35,payment=25,credit=10,invoice=20,audit=10")

    def handle(self, *args: Any, **options: Any) -> None:
        setup.set_default_service("flowscope-loadgen")
        try:
            generator = LoadGenerator(rate=options["rate"], mix=parse_mix(options["mix"]) if options["mix"] else None)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        counts = generator.run(duration=options["duration"], stop=stop, progress=self._progress)
        self._progress(None, counts)

    def _progress(self, elapsed: float | None, counts: Counter[str]) -> None:
        sent = sum(v for k, v in counts.items() if k.startswith("sent."))
        refused = sum(v for k, v in counts.items() if k.startswith("refused."))
        errors = sum(v for k, v in counts.items() if k.startswith("errors."))
        flows = " ".join(f"{k[5:]}={v}" for k, v in sorted(counts.items()) if k.startswith("sent."))
        replies = f"replies ok={counts['replies.ok']} timeout={counts['replies.timeout']} failed={counts['replies.failed']}"
        head = "loadgen done" if elapsed is None else f"loadgen {elapsed:5.0f}s"
        self.stdout.write(f"{head}: sent {sent} ({flows}); refused by back-pressure {refused}; {replies}" + (f"; failed to send {errors}" if errors else ""))
        self.stdout.flush()
