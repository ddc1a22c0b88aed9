"""The Celery app. Workers run the engine's one generic delivery task for every handler."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("flowscope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["flows", "tracing", "console.alerts"])


@task_prerun.connect
@task_postrun.connect
def _database_connections_as_django_keeps_them(**_: object) -> None:
    """Around each task, what Django does around each request: close a connection past
    CONN_MAX_AGE (0 on SQLite: every task) or one that failed; keep a healthy one (settings.py)."""
    close_old_connections()
