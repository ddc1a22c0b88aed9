"""A worker's database connections dropped by the server (a failover, an idle timeout, an
administrator's pg_terminate_backend): what was being delivered is retried or returned to the
queue, never lost or applied twice, and what comes after is handled as before.

PostgreSQL only: SQLite has no server to drop a connection. The worker is the test's own, with
its connections named, so that only its connections are dropped, whatever the session's holds."""

import os
from collections.abc import Iterator

import pytest
from django.db import connection

from examples.demo.models import LedgerEntry
from flows.core.registry import catalog
from flows.models import DeadLetter, InboxEntry
from flows.produce.publishing import build_envelope, publish_to
from tests.support.brokers import push_raw, waiting
from tests.support.waiting import wait_for
from tests.support.workers import Worker, worker_database_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only: SQLite has no server to drop a connection"),
]

QUEUE = "t.drops"
APPLICATION = f"flowscope-drops-{os.getpid()}"


@pytest.fixture(scope="module")
def dropping_worker(django_db_setup: object) -> Iterator[Worker]:
    node = Worker("drops", [QUEUE], extra_env={"DATABASE_URL": f"{worker_database_url()}?application_name={APPLICATION}"}).start()
    yield node
    node.stop()


def drop_the_workers_connections() -> int:
    """Terminate every backend the worker holds (its pool processes' and its main process's)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", [APPLICATION])
        return cursor.fetchone()[0]


def test_deliveries_whose_connection_is_dropped_are_applied_once_each(dropping_worker):
    # Workers keep their connection and check its health at most once a second while busy
    # (console/celery.py): one dropped in between fails a statement, and that delivery must be
    # retried, never lost or applied twice.
    handler = catalog.handler("t_credit_dropped")
    keys = [f"drop-{i}" for i in range(40)]
    for i, reference in enumerate(keys):
        publish_to(handler, build_envelope("test.credit.dropped", {"key": reference, "sleep": 0.02}))
        if i % 10 == 5:
            wait_for(lambda r=reference: LedgerEntry.objects.filter(reference=r).exists(), what=f"{reference} to be applied")
            assert drop_the_workers_connections() >= 1  # the pool process that applied it keeps its connection

    wait_for(lambda: LedgerEntry.objects.filter(reference__in=keys).count() == len(keys), timeout=60, what="every message to be applied")
    assert InboxEntry.objects.filter(consumer="t_credit_dropped").count() == len(keys)
    for reference in keys:
        assert LedgerEntry.objects.filter(reference=reference).count() == 1, reference


def test_an_unreadable_message_after_a_dropped_connection_is_still_a_dead_letter(dropping_worker):
    # Unreadable items are stored by the worker's main process, which runs no task: nothing
    # around a task renews its connection there (flows.consume.broker.record_garbage).
    push_raw(QUEUE, b"\x00 the first unreadable item")
    wait_for(lambda: DeadLetter.objects.filter(queue=QUEUE, poison=True).exists(), what="the first item's dead letter")
    assert drop_the_workers_connections() >= 1  # the main process's, kept since the first

    push_raw(QUEUE, b"\x00 the second unreadable item")

    wait_for(lambda: DeadLetter.objects.filter(queue=QUEUE, poison=True).count() == 2, what="the second item's dead letter")
    second = DeadLetter.objects.filter(queue=QUEUE, poison=True).order_by("-dead_at").first()
    assert "the second unreadable item" in second.envelope["unparsed"]
    assert (second.attempts, second.state) == (1, DeadLetter.State.DEAD)
    assert waiting(QUEUE) == 0
