from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows.patterns.saga_state import sweep_stalled_sagas


class Command(BaseCommand):
    help = "Resume sagas that have not moved for --stall-seconds (default FLOWS_SAGA_STALL_SECONDS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stall-seconds", type=float, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        stall = options["stall_seconds"]
        if stall is not None and stall < 0:
            raise CommandError("--stall-seconds must not be negative")
        resumed = sweep_stalled_sagas(stall_seconds=stall)
        self.stdout.write(f"resumed {resumed} stalled saga(s)")
