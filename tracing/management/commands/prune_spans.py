from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tracing.retention import prune_spans


class Command(BaseCommand):
    help = "Delete spans (and their links and aggregates) older than --days (default TRACING_RETENTION_DAYS); on PostgreSQL whole days, by dropping their partitions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=None)
        parser.add_argument("--batch", type=int, default=5000)

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is not None and days < 0:
            raise CommandError("--days must not be negative")
        if options["batch"] < 1:
            raise CommandError("--batch must be at least 1")
        deleted = prune_spans(older_than=timedelta(days=days) if days is not None else None, batch=options["batch"])
        said = [f"dropped {n} day partitions of {what.removesuffix('_days_dropped')}s" if what.endswith("_days_dropped") else f"deleted {n} {what.replace('_', ' ')}" for what, n in deleted.items()]
        self.stdout.write(", ".join(said))
