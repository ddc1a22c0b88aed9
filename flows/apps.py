import importlib

from django.apps import AppConfig
from django.conf import settings


class FlowsConfig(AppConfig):
    name = "flows"
    verbose_name = "Flows engine"

    def ready(self) -> None:
        from flows.registry import catalog

        for module in settings.FLOWS_MODULES:
            importlib.import_module(module)
        catalog.check()
