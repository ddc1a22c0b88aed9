"""The Celery tasks' own failure paths: nothing is acknowledged that was not made durable."""

import pytest
from celery.exceptions import Reject
from django.db import OperationalError

from flows.consume import runtime, tasks
from flows.models import RequeueJob
from flows.operate import tasks as operator_tasks

pytestmark = pytest.mark.django_db


def test_a_delivery_whose_outcome_cannot_be_stored_goes_back_to_the_queue(monkeypatch):
    def database_away(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(runtime, "deliver", database_away)
    monkeypatch.setattr(tasks, "REQUEUE_PAUSE_SECONDS", 0)
    monkeypatch.setattr(tasks.counters, "identify", lambda worker: None)  # no heartbeat thread in the test process
    with pytest.raises(Reject) as rejected:
        tasks.deliver.run({"type": "test.command", "payload": {"key": "k"}}, "t_command")
    assert rejected.value.requeue is True


def test_a_bulk_requeue_job_that_breaks_says_so_on_the_job(monkeypatch):
    job = RequeueJob.objects.create(created_by="tester", max_id=10, total=3)

    def broken(job_id, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(operator_tasks, "requeue_job_run_slice", broken)
    with pytest.raises(OperationalError):
        operator_tasks.run_requeue_job.run(job.pk)
    job.refresh_from_db()
    assert (job.state, job.error) == ("failed", "OperationalError: database is locked")
