"""The Celery app. Workers run the engine's one generic delivery task for every handler."""

import os
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections, connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("flowscope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["flows", "tracing", "console.alerts"])

# Django checks a kept connection's health (a SELECT 1) at the start of each request; done around
# every task, that round trip was a tenth of an idempotent hop's time on PostgreSQL. A busy worker
# checks at most once a second; one idle longer checks before its next task, as Django would. A
# connection the server drops within that second fails the next statement instead, and that
# delivery is retried or returned to the queue as on any database error (flows.consume.tasks);
# the failed connection is closed after the task. Django's own default is no check at all.
HEALTH_CHECK_EVERY_S = 1.0
_checked_at = 0.0


def _must_look_now(conn, now: float) -> bool:  # type: ignore[no-untyped-def]
    """A connection Django would close or test whatever the time: one that failed, one left out
    of autocommit, one past CONN_MAX_AGE (on SQLite, 0: after every task). The attributes are
    BaseDatabaseWrapper's (errors_occurred, close_at; checked against Django 5.2): no public call
    says this without also scheduling a health check."""
    if conn.connection is None:
        return False
    return conn.errors_occurred or conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"] or (conn.close_at is not None and now >= conn.close_at)


@task_prerun.connect
@task_postrun.connect
def _database_connections_as_django_keeps_them(**_: object) -> None:
    """Around each task, what Django does around each request: close a connection past
    CONN_MAX_AGE or one that failed, keep a healthy one (settings.py), test a kept one's health."""
    global _checked_at
    now = time.monotonic()
    if now - _checked_at < HEALTH_CHECK_EVERY_S and not any(_must_look_now(conn, now) for conn in connections.all(initialized_only=True)):
        return
    close_old_connections()
    _checked_at = now
