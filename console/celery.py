"""The Celery app. Workers run the engine's one generic delivery task for every handler."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("flowscope")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Redis, with queue items that are not Celery messages dead-lettered instead of ending the worker,
# and messages Celery's consumer would drop (unknown task, undecodable body) dead-lettered too.
app.conf.broker_transport = "flows.broker:Transport"
app.conf.worker_consumer = "flows.broker:Consumer"
app.autodiscover_tasks(["flows", "tracing"])
