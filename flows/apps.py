import importlib

from django.apps import AppConfig
from django.conf import settings


class FlowsConfig(AppConfig):
    name = "flows"
    verbose_name = "Flows engine"

    def ready(self) -> None:
        # Imported here, not at the top: it needs the models, which Django loads after AppConfigs.
        from flows.patterns import check_catalog

        for module in settings.FLOWS_MODULES:
            importlib.import_module(module)
        check_catalog()
