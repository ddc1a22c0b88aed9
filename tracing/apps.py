from django.apps import AppConfig


class TracingConfig(AppConfig):
    name = "tracing"
    verbose_name = "Tracing"

    def ready(self) -> None:
        from tracing import celery_hooks  # noqa: F401 - connects the worker signals
