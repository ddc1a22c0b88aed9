from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "flows.demo"
    label = "demo"
    verbose_name = "Demo catalog"
