import time

import pytest

import flows
from flows.core import deliveries
from flows.models import DeadLetter
from tests.flows_under_test import recorded
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_subscriber_gets_its_own_copy_and_the_event_knows_how_each_went(worker):
    event = flows.send("test.event", {"key": "e1"})
    message_id = str(event.message_id)

    wait_for(lambda: "e1" in recorded("t_sub_fast") and "e1" in recorded("t_sub_slow"), what="both healthy subscribers")
    dead = wait_for(lambda: DeadLetter.objects.filter(message_id=event.message_id, consumer="t_sub_failing").first(), what="the failing subscriber's dead letter")
    assert dead.attempts == 2

    status = wait_for(lambda: (s := deliveries.statuses(message_id)) and s["t_sub_failing"]["status"] == deliveries.DEAD and s, what="final statuses")
    assert {c: s["status"] for c, s in status.items()} == {
        "t_sub_fast": deliveries.SUCCEEDED,
        "t_sub_slow": deliveries.SUCCEEDED,
        "t_sub_failing": deliveries.DEAD,
    }
    assert all(s["worker"].startswith("session@") for s in status.values())


def test_a_slow_subscriber_does_not_delay_the_others(worker):
    started = time.monotonic()
    event = flows.send("test.event", {"key": "e2", "slow_seconds": 4.0})
    message_id = str(event.message_id)

    wait_for(
        lambda: deliveries.statuses(message_id).get("t_sub_fast", {}).get("status") == deliveries.SUCCEEDED,
        timeout=3.5,
        what="the fast subscriber, well before the slow one ends",
    )
    fast_done = time.monotonic() - started
    assert "e2" in recorded("t_sub_fast")
    assert deliveries.statuses(message_id)["t_sub_slow"]["status"] == deliveries.PENDING, f"the slow one was already done after {fast_done:.2f}s"

    wait_for(lambda: deliveries.statuses(message_id)["t_sub_slow"]["status"] == deliveries.SUCCEEDED, what="the slow subscriber")


def test_a_fan_out_needs_each_subscriber_on_its_own_queue():
    from flows.core.errors import ConfigurationError
    from flows.core.registry import catalog
    from flows.patterns import get_pattern

    handlers = catalog.handlers_for("test.event")
    shared = [handlers[0], handlers[1].__class__(**{**handlers[1].__dict__, "queue": handlers[0].queue})]
    with pytest.raises(ConfigurationError, match="a queue of its own"):
        get_pattern("fan_out").check(catalog.message_type("test.event"), shared)
