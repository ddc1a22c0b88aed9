"""Check 4: the same dead letter requeued by two clients at once is republished exactly once."""

import threading

import pytest
from django.db import connection
from django.test import Client

import flows
from flows.models import DeadLetter
from tests.people import token_for
from tests.reliability.catalog import runs
from tests.reliability.conftest import sized
from tests.reliability.held import settled
from tests.support.waiting import wait_for
from tracing.redis import get_redis, key

pytestmark = pytest.mark.django_db(transaction=True)


def requeue_at_once(dead_letter_id: int, tokens: list[str]) -> list[int]:
    """Two API clients post the requeue at the same instant; their status codes."""
    barrier = threading.Barrier(len(tokens))
    statuses: list[int] = []

    def client(token: str) -> None:
        try:
            barrier.wait()
            response = Client().post(f"/api/v1/deadletters/{dead_letter_id}/requeue", HTTP_AUTHORIZATION=f"Bearer {token}")
            statuses.append(response.status_code)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=client, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_a_dead_letter_requeued_by_two_clients_at_once_is_republished_exactly_once(chaos_worker, figure):
    n = sized(100, 30)
    chaos_worker("requeue", ["r.fixable"])
    for i in range(n):
        flows.send("rel.fixable", {"key": f"f{i}"})
    wait_for(lambda: DeadLetter.objects.filter(consumer="r_fixable", state="dead").count() == n, timeout=60, what=f"{n} dead letters")
    get_redis().set(key("rel", "fixed"), 1)

    tokens = [token_for("operator"), token_for("operator")]
    outcomes = []
    for dead in DeadLetter.objects.filter(consumer="r_fixable").order_by("pk"):
        outcomes.append(sorted(requeue_at_once(dead.pk, tokens)))
    wait_for(lambda: DeadLetter.objects.filter(consumer="r_fixable", state="resolved").count() == n, timeout=60, what="every requeue to succeed")
    wait_for(lambda: settled("r.fixable"), what="nothing left in flight")

    ran = runs("r_fixable")
    figure(f"{n} dead letters x 2 simultaneous requeues: {sum(o == [200, 409] for o in outcomes)} answered one 200 and one 409; {len(ran)} runs after the fix, {len(ran) - len(set(ran))} duplicated")
    assert all(o == [200, 409] for o in outcomes), f"answers per race: {outcomes}"
    assert sorted(ran) == sorted(f"f{i}" for i in range(n)), "each requeued message ran exactly once"
    assert set(DeadLetter.objects.filter(consumer="r_fixable").values_list("series", flat=True)) == {1}
