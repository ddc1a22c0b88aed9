from django.apps import AppConfig


class LabConfig(AppConfig):
    name = "tooling.lab"
    label = "lab"
    verbose_name = "Pattern lab"
    # The console shows the last run where the lab is installed (console.extensions).
    console_urls = "tooling.lab.urls"
    console_nav = ("Lab", "lab", "lab")
