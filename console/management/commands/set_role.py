from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from console.audit import audit
from console.models import Role
from console.roles import role_of, set_role


class Command(BaseCommand):
    help = "Give a user a console role: viewer (reads), operator (moves messages), admin (users, tokens, retention)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role", choices=Role.values)

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}; create one with: manage.py createuser or the admin site")
        with transaction.atomic():
            before = role_of(user)
            set_role(user, options["role"])
            # The admin role also opens Django's admin site, where users are managed.
            user.is_staff = options["role"] == Role.ADMIN or user.is_superuser
            user.save(update_fields=["is_staff"])
            audit("manage.py set_role", "set_role", object_type="user", object_ids=[user.pk], before={"role": before}, after={"role": options["role"]})
        self.stdout.write(f"{user.get_username()} is now {options['role']}")
