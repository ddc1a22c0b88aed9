from django.apps import AppConfig
from django.core import checks as django_checks

from console import checks


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Console"

    def ready(self) -> None:
        django_checks.register(checks.otlp_receiver_open, django_checks.Tags.security, deploy=True)
