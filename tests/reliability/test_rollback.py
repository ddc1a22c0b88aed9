"""Check 7: a message published inside a database transaction that rolls back is never delivered."""

import pytest
from django.db import transaction

import flows
from flows.models import SagaInstance
from tests.reliability.catalog import runs
from tests.reliability.conftest import sized
from tests.reliability.held import settled
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Abort(Exception):
    pass


def test_messages_and_sagas_started_in_a_rolled_back_transaction_are_never_delivered(chaos_worker, figure):
    n = sized(200, 50)
    chaos_worker("rollback", ["r.notes", "r.trips"])
    for i in range(n):
        try:
            with transaction.atomic():
                flows.send("rel.note", {"key": f"rolled-back-{i}"})
                flows.start_saga("rel.trip", {"trip": f"rolled-back-{i}"})
                raise Abort
        except Abort:
            pass
        with transaction.atomic():
            flows.send("rel.note", {"key": f"committed-{i}"})
    wait_for(lambda: sum(r.startswith("committed-") for r in runs("r_note")) == n, what="the committed messages")
    wait_for(lambda: settled("r.notes", "r.trips"), what="empty queues, nothing held")

    ran = runs("r_note")
    delivered = [r for r in ran if r.startswith("rolled-back-")]
    figure(f"{n} rolled-back sends and saga starts: {len(delivered)} delivered, {SagaInstance.objects.count()} sagas stored; {n} committed sends: {n} delivered")
    assert delivered == []
    assert SagaInstance.objects.count() == 0
