import pytest

import flows
from examples.demo.models import LedgerEntry
from flows.consume.idempotency import duplicate_counts
from flows.core.envelope import Envelope
from flows.core.registry import catalog
from flows.models import DeadLetter, SagaInstance, SagaStep
from flows.operate.dead_letters import dead_letter_requeue
from flows.patterns.saga_state import sweep_stalled_sagas
from flows.produce.publishing import publish_to
from tests.flows_under_test import fix, recorded
from tests.support.brokers import on_rabbitmq
from tests.support.waiting import wait_for
from tracing.redis import get_redis, key

pytestmark = pytest.mark.django_db(transaction=True)


def finished(saga: SagaInstance, *states: str) -> SagaInstance:
    return wait_for(lambda: SagaInstance.objects.filter(pk=saga.pk, state__in=states).first(), what=f"saga to end {states}")


def history(saga: SagaInstance) -> list[tuple[str, str, str]]:
    return list(SagaStep.objects.filter(saga=saga).order_by("finished_at", "id").values_list("name", "phase", "outcome"))


def test_a_saga_runs_its_steps_in_order_and_completes_with_their_data(worker):
    saga = flows.start_saga("test.trip", {"trip": "t1"}, correlation_id="order-1")

    saga = finished(saga, "completed", "failed", "compensated")
    assert saga.state == "completed" and saga.finished_at is not None
    assert recorded("trip:t1") == ["action:flight", "action:hotel", "action:charge"]
    assert history(saga) == [("flight", "action", "succeeded"), ("hotel", "action", "succeeded"), ("charge", "action", "succeeded")]
    assert saga.data == {"trip": "t1", "flight_done": True, "hotel_done": True, "charge_done": True}
    assert saga.correlation_id == "order-1"


def test_a_failing_third_step_compensates_steps_two_and_one_in_that_order(worker):
    saga = flows.start_saga("test.trip", {"trip": "t2", "fail_at": "charge"})

    saga = finished(saga, "compensated", "failed", "completed")
    assert saga.state == "compensated"
    assert saga.failed_step == 2 and "charge is sold out" in saga.error
    assert recorded("trip:t2") == [
        "action:flight",
        "action:hotel",
        "action:charge",
        "action:charge",  # two attempts
        "compensation:hotel",
        "compensation:flight",
    ]
    assert history(saga) == [
        ("flight", "action", "succeeded"),
        ("hotel", "action", "succeeded"),
        ("charge", "action", "failed"),
        ("hotel", "compensation", "succeeded"),
        ("flight", "compensation", "succeeded"),
    ]
    assert SagaStep.objects.get(saga=saga, name="charge").attempts == 2
    assert not DeadLetter.objects.filter(saga=saga).exists(), "a compensated step is the saga's business, not a dead letter"


def test_a_failing_first_step_has_nothing_to_compensate(worker):
    saga = finished(flows.start_saga("test.trip", {"trip": "t3", "fail_at": "flight"}), "compensated", "failed", "completed")
    assert saga.state == "compensated"
    assert history(saga) == [("flight", "action", "failed")]


def test_a_failing_compensation_leaves_the_saga_failed_until_its_dead_letter_is_requeued(worker):
    saga = flows.start_saga("test.trip", {"trip": "t4", "fail_at": "charge", "fail_compensation": "hotel"})

    saga = finished(saga, "failed", "compensated", "completed")
    assert saga.state == "failed" and "cannot undo hotel" in saga.error
    dead = DeadLetter.objects.get(saga=saga)
    assert dead.saga_step == 1 and dead.message_type == "test.trip.hotel.undo"

    fix("comp:t4")
    assert dead_letter_requeue(dead_letter_id=dead.pk, actor="operator")
    saga = finished(saga, "compensated")
    assert history(saga)[-2:] == [("hotel", "compensation", "succeeded"), ("flight", "compensation", "succeeded")]
    wait_for(lambda: DeadLetter.objects.filter(pk=dead.pk, state="resolved").exists(), what="the dead letter to resolve")


def test_a_redelivered_step_does_not_apply_its_transition_or_effect_twice(worker):
    saga = finished(flows.start_saga("test.trip", {"trip": "t5"}), "completed")
    first_step = saga.steps.get(name="flight", phase="action")
    again = Envelope(
        type="test.trip.flight",
        payload={"trip": "t5"},
        message_id=first_step.message_id,
        headers={"pattern": "saga", "saga_id": str(saga.pk), "saga_step": 0, "saga_phase": "action"},
    )
    publish_to(catalog.handler("test.trip.flight"), again)

    wait_for(lambda: duplicate_counts().get("test.trip.flight") == 1, what="the redelivery to be counted as a duplicate")
    assert LedgerEntry.objects.filter(reference="t5", kind="action:flight").count() == 1
    assert SagaStep.objects.filter(saga=saga).count() == 3


@pytest.mark.parametrize("saga_id", ["7b1c0d5e-0000-4000-8000-000000000000", "not-a-uuid"])
def test_a_step_of_a_saga_that_does_not_exist_is_dead_lettered_once_not_returned_to_the_queue(worker, saga_id):
    stray = Envelope(type="test.trip.flight", payload={"trip": "gone"}, headers={"pattern": "saga", "saga_id": saga_id, "saga_step": 0, "saga_phase": "action"})
    publish_to(catalog.handler("test.trip.flight"), stray)

    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=stray.message_id).first(), what="the stray step to be dead-lettered")
    assert dead.poison and dead.saga_id is None and dead.envelope["headers"]["saga_id"] == saga_id
    assert "saga" in dead.error_message
    assert "could not record the outcome" not in worker.log_text()


def test_a_saga_whose_worker_is_killed_mid_step_completes_after_a_restart(start_worker):
    crash_worker = start_worker("crash1", ["t.sagas.crash"], concurrency=1)
    saga = flows.start_saga("test.crashtrip", {"trip": "k1", "block_at": "hotel"})
    wait_for(lambda: get_redis().exists(key("test", "started", "k1")), what="the hotel step to be running")

    crash_worker.kill()  # SIGKILL, pool child included, in the middle of the hotel step
    saga.refresh_from_db()
    assert (saga.state, saga.current_step) == ("running", 1)

    start_worker("crash2", ["t.sagas.crash"], concurrency=1)

    # On Redis the killed delivery stays unacknowledged until the broker's visibility timeout
    # (an hour); the sweeper takes the stalled saga up long before that. RabbitMQ hands the
    # killed delivery to the new worker at once (its channel closed), which may move the saga
    # on before the sweeper looks: either way the step runs again once and the saga completes.
    def resumed() -> bool:
        sweep_stalled_sagas(stall_seconds=0.5)
        row = SagaInstance.objects.get(pk=saga.pk)
        return row.resumed > 0 or (on_rabbitmq() and row.state != "running")

    wait_for(resumed, what="the sweeper to resume it (or, on RabbitMQ, the redelivery to move it on)")
    saga = finished(saga, "completed", "failed", "compensated")
    assert saga.state == "completed" and (saga.resumed >= 1 or on_rabbitmq())
    assert [s for s in recorded("trip:k1") if s == "action:hotel"] == ["action:hotel", "action:hotel"], "killed once, run again once"
    assert LedgerEntry.objects.filter(reference="k1").count() == 3, "each step's effect exactly once"


def test_the_sweeper_leaves_moving_sagas_alone(worker):
    saga = finished(flows.start_saga("test.trip", {"trip": "t6"}), "completed")
    assert sweep_stalled_sagas(stall_seconds=0) == 0
    saga.refresh_from_db()
    assert saga.resumed == 0


def test_saga_data_and_names_are_checked_before_anything_is_stored():
    from flows.core.errors import ConfigurationError, EnvelopeError, PayloadInvalid

    with pytest.raises(ConfigurationError, match="unknown saga 'nope'"):
        flows.start_saga("nope", {})
    with pytest.raises(EnvelopeError, match="saga data must be a JSON object"):
        flows.start_saga("test.trip", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(PayloadInvalid, match="trip: Field required"):
        flows.start_saga("test.trip", {"destination": "Lisbon"})
    with pytest.raises(ConfigurationError, match="use flows.start_saga"):
        flows.send("test.trip.flight", {"trip": "x"})
    assert not SagaInstance.objects.exists()
