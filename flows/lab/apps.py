from django.apps import AppConfig


class LabConfig(AppConfig):
    name = "flows.lab"
    label = "lab"
    verbose_name = "Pattern lab"
