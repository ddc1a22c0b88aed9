"""Check 5: saga chaos. The worker process running a saga is SIGKILLed after each step and each
compensation, either as soon as the step's transaction commits (before the next step is sent)
or after everything but the broker acknowledgement. Every saga must still end completed or
compensated, compensations in reverse order, each effect at most once."""

import itertools
import time

import pytest
from django.db.models import Count

import flows
from examples.demo.models import LedgerEntry
from flows.models import SagaInstance, SagaStep
from flows.patterns.saga_state import sweep_stalled_sagas
from tests.reliability.conftest import sized
from tests.support.waiting import wait_for
from tracing.redis import get_redis, key

pytestmark = pytest.mark.django_db(transaction=True)
# A step whose next message died with its worker is taken up again by the sweeper; production
# waits FLOWS_SAGA_STALL_SECONDS (120 s), the check two seconds.
STALL_SECONDS = 2


PLANS = [("", "commit"), ("charge", "commit"), ("", "ack"), ("charge", "ack")]


@pytest.mark.timeout(600)
def test_sagas_whose_worker_process_dies_after_every_step_and_compensation_all_end_consistently(chaos_worker, figure):
    runs = sized(50, 12)
    node = chaos_worker("sagas", ["r.trips"])
    plans = list(itertools.islice(itertools.cycle(PLANS), runs))
    started = time.monotonic()
    sagas = [flows.start_saga("rel.trip", {"trip": f"trip-{i}", "fail_at": fail_at, "kill": kill}) for i, (fail_at, kill) in enumerate(plans)]

    def all_ended() -> bool:
        sweep_stalled_sagas(stall_seconds=STALL_SECONDS)
        return ended(sagas)

    wait_for(all_ended, timeout=120 + runs * 6, interval=0.5, what=f"{runs} sagas to end")
    assert node.process.poll() is None, "the worker node itself survives its children's deaths"
    check_outcomes(sagas, plans, time.monotonic() - started, figure)


@pytest.mark.timeout(600)
def test_sagas_whose_whole_worker_node_dies_after_every_step_and_compensation_all_end_consistently(chaos_worker, figure):
    # Every node death costs a worker start, and on Redis a delivery it held waits out the visibility
    # timeout: four sagas (one of each plan) already kill the node 14 times.
    runs = sized(4, 2)
    plans = [PLANS[1], PLANS[2], PLANS[0], PLANS[3]][:runs]
    node = chaos_worker("sagas-node-0", ["r.trips"])
    restarts = 0
    started = time.monotonic()
    # One saga at a time, so each node death interrupts exactly one step.
    sagas = []
    for i, (fail_at, kill) in enumerate(plans):
        sagas.append(flows.start_saga("rel.trip", {"trip": f"node-trip-{i}", "fail_at": fail_at, "kill": kill, "whole_node": True}))

        def ended_restarting() -> bool:
            nonlocal node, restarts
            if node.process.poll() is not None:  # killed itself: start a new node, as a supervisor would
                restarts += 1
                node = chaos_worker(f"sagas-node-{restarts}", ["r.trips"])
            sweep_stalled_sagas(stall_seconds=STALL_SECONDS)
            return ended(sagas[-1:])

        wait_for(ended_restarting, timeout=180, interval=0.5, what=f"saga {i} to end")
    figure(f"worker node killed and restarted {restarts} times")
    check_outcomes(sagas, plans, time.monotonic() - started, figure)


def ended(sagas: list[SagaInstance]) -> bool:
    return not SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).exclude(state__in=["completed", "compensated", "failed"]).exists()


def check_outcomes(sagas: list[SagaInstance], plans: list[tuple[str, str]], took: float, figure) -> None:
    runs = len(sagas)

    kills = int(get_redis().get(key("rel", "kills")) or 0)
    states = dict(SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list("state").annotate(n=Count("id")))
    doubles = list(LedgerEntry.objects.filter(service="rel-trip").values("reference", "kind").annotate(n=Count("id")).filter(n__gt=1))
    resumed = sum(SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list("resumed", flat=True))
    figure(f"{runs} sagas, {kills} kills: {states}; {len(doubles)} effects applied twice; {resumed} resumed by the sweeper; {took:.0f}s")

    for saga, (fail_at, _) in zip(sagas, plans):
        saga.refresh_from_db()
        effects = list(LedgerEntry.objects.filter(service="rel-trip", reference=saga.data["trip"]).order_by("id").values_list("kind", flat=True))
        compensations = list(SagaStep.objects.filter(saga=saga, phase="compensation", outcome="succeeded").order_by("finished_at", "id").values_list("name", flat=True))
        if fail_at:
            assert saga.state == "compensated", (saga.data, saga.state, effects)
            assert effects == ["action:flight", "action:hotel", "compensation:hotel", "compensation:flight"], (saga.data, effects)
            assert compensations == ["hotel", "flight"], (saga.data, compensations)
        else:
            assert saga.state == "completed", (saga.data, saga.state, effects)
            assert effects == ["action:flight", "action:hotel", "action:charge"], (saga.data, effects)
            assert compensations == []
    assert not doubles
    assert kills == sum(4 if fail_at else 3 for fail_at, _ in plans), "a kill after every step and compensation"
