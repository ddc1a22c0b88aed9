"""Check 1: a worker SIGKILLed in the middle of a run loses nothing and runs nothing twice."""

import time

import pytest
from django.db.models import Count

import flows
from examples.demo.models import LedgerEntry
from flows.consume.idempotency import duplicate_counts
from flows.models import DeadLetter
from tests.reliability.conftest import VISIBILITY_SECONDS, sized
from tests.support.waiting import wait_for
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


def unacked_deliveries() -> int:
    return int(get_redis().hlen("unacked"))


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_run_leaves_every_message_processed_once_or_dead_lettered(chaos_worker, figure):
    n = sized(10_000, 1_000)
    victim = chaos_worker("victim", ["r.credits"])
    chaos_worker("survivor", ["r.credits"])
    keys = [f"c{i}" for i in range(n)]
    for k in keys:
        flows.send("rel.credit", {"key": k})

    wait_for(lambda: LedgerEntry.objects.filter(service="rel").count() >= n // 3, timeout=120, what="a third of the run to be processed")
    victim.kill()  # SIGKILL to the whole process group: the pool children die mid-delivery
    killed_at = time.monotonic()
    held = unacked_deliveries()
    done_at_kill = LedgerEntry.objects.filter(service="rel").count()

    def accounted() -> bool:
        return LedgerEntry.objects.filter(service="rel").count() + DeadLetter.objects.filter(consumer="r_credit").count() >= n

    # The killed worker's deliveries return after the visibility timeout; allow that plus the rest of the run.
    wait_for(accounted, timeout=VISIBILITY_SECONDS + 240, interval=0.25, what=f"all {n} messages to be processed or dead-lettered")
    wait_for(lambda: get_redis().llen("r.credits") == 0 and unacked_deliveries() == 0, timeout=60, what="the queue and the unacknowledged set to drain")
    drained_s = time.monotonic() - killed_at

    processed = set(LedgerEntry.objects.filter(service="rel").values_list("reference", flat=True))
    twice = list(LedgerEntry.objects.filter(service="rel").values("reference").annotate(n=Count("id")).filter(n__gt=1).values_list("reference", flat=True))
    dead = set(DeadLetter.objects.filter(consumer="r_credit").values_list("envelope__payload__key", flat=True))
    lost = set(keys) - processed - dead
    suppressed = duplicate_counts().get("r_credit", 0)
    figure(
        f"{n} sent; killed at {done_at_kill} processed holding {held} unacknowledged; {len(processed)} processed, "
        f"{len(dead)} dead-lettered, {len(lost)} lost, {len(twice)} applied twice, {suppressed} redeliveries suppressed by the inbox; "
        f"drained {drained_s:.1f}s after the kill"
    )
    assert not lost, f"lost: {sorted(lost)[:10]}"
    assert not twice, f"applied twice: {twice[:10]}"
    assert not (processed & dead), "a message both processed and dead-lettered"
