from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows.core.errors import FlowsError
from flows.models import DeadLetter
from flows.operate.dead_letters import dead_letter_requeue


class Command(BaseCommand):
    help = "Requeue dead letters by id, or every dead one in a cause group (--fingerprint)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", type=int)
        parser.add_argument("--fingerprint", default="")
        parser.add_argument("--actor", default="manage.py requeue")
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["ids"] and not options["fingerprint"]:
            raise CommandError("name dead letter ids, or --fingerprint for a whole cause group")
        rows = DeadLetter.objects.filter(state=DeadLetter.State.DEAD)
        ids = list(rows.filter(fingerprint=options["fingerprint"]).values_list("id", flat=True)) if options["fingerprint"] else options["ids"]
        if options["dry_run"]:
            self.stdout.write(f"would requeue {rows.filter(id__in=ids).count()} dead letter(s)")
            return
        done = skipped = 0
        for dead_letter_id in ids:
            try:
                if dead_letter_requeue(dead_letter_id=dead_letter_id, actor=options["actor"]):
                    done += 1
                else:
                    skipped += 1
                    self.stderr.write(f"dead letter {dead_letter_id}: not dead (missing, or already requeued, resolved or discarded)")
            except FlowsError as exc:
                skipped += 1
                self.stderr.write(str(exc))
        self.stdout.write(f"requeued {done}, skipped {skipped}")
        if skipped and not done:
            raise CommandError("nothing was requeued")
