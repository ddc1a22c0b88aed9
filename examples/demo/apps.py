from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "examples.demo"
    label = "demo"
    verbose_name = "Demo catalog"
