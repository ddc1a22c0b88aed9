from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from console.audit import audit
from console.models import ApiToken, Role


class Command(BaseCommand):
    help = "Create an API token for scripts; the token is printed once and only its hash is kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="what the token is for")
        parser.add_argument("--role", required=True, choices=Role.values, help="viewer, operator or admin for scripts; agent for a flowscope-agent, which may only send spans")
        parser.add_argument("--app", default="", help="agent tokens only: the one attached app (FLOWSCOPE_APP) it may report and take orders for; left out, any app")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            try:
                token, secret = ApiToken.issue(name=options["name"], role=options["role"], app=options["app"], created_by="manage.py create_token")
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            audit("manage.py create_token", "create_token", object_type="api_token", object_ids=[token.pk], after={"name": token.name, "role": token.role, "app": token.app})
        self.stdout.write(secret)
        scope = f" for app {token.app}" if token.app else ""
        self.stderr.write(f"token {token.hint}... ({token.role}{scope}) created; it is not shown again. Use it as 'Authorization: Bearer <token>'.")
