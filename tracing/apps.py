from django.apps import AppConfig
from django.db.models.signals import post_migrate

from tracing.partitions import create_ahead


def _create_span_partitions(sender, using: str = "default", **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Every migrate makes today's partitions and the days ahead, so a new install (or a test
    database) never starts with every span in DEFAULT until the beat first runs."""
    create_ahead()


class TracingConfig(AppConfig):
    name = "tracing"
    verbose_name = "Tracing"

    def ready(self) -> None:
        from tracing import celery_hooks  # noqa: F401 - connects the worker signals

        post_migrate.connect(_create_span_partitions, sender=self)
