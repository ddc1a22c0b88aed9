from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from examples.demo import faults
from flows.core.registry import catalog


class Command(BaseCommand):
    help = "Show or change the demo's injected faults per handler, live."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("consumer", nargs="?", help="handler (consumer) name; omit to show all")
        parser.add_argument("--error-rate", type=float)
        parser.add_argument("--latency-ms", type=float)
        parser.add_argument("--poison-rate", type=float)
        parser.add_argument("--clear", action="store_true", help="remove every injected fault")
        parser.add_argument("--demo-profile", action="store_true", help="load the profile `make demo` starts with")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["clear"]:
            faults.clear_faults()
        if options["demo_profile"]:
            for consumer, fault in faults.DEMO_PROFILE.items():
                faults.set_fault(consumer, fault)
        consumer = options["consumer"]
        if consumer:
            if consumer not in catalog.handlers:
                raise CommandError(f"unknown handler {consumer!r}; known: {', '.join(sorted(catalog.handlers))}")
            current = faults.get_fault(consumer)
            changes = {k: options[k] for k in ("error_rate", "latency_ms", "poison_rate") if options[k] is not None}
            try:
                fault = faults.Fault(**{**current.__dict__, **changes})
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            faults.set_fault(consumer, fault)
        for name, fault in sorted(faults.all_faults().items()):
            self.stdout.write(f"{name:28} error {fault.error_rate:.0%}  poison {fault.poison_rate:.0%}  latency {fault.latency_ms:g} ms")
