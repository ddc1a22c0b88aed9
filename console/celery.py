"""The Celery app. Workers run the engine's one generic delivery task for every handler."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("flowscope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["flows", "tracing", "console.alerts"])
