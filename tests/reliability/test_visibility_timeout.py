"""Check 6: a delay longer than the broker can hold is refused at publish and at declaration, with
the reason; one within it runs exactly once.

Redis holds a delayed message as a worker's unacknowledged delivery: past the visibility timeout
it would be handed to a second worker, so the limit is half that timeout, and the check watches
two workers past it. RabbitMQ holds the message itself (native delayed delivery, no worker holds
it meanwhile), up to RABBITMQ_MAX_DELAY_SECONDS.
"""

import time

import pytest

import flows
from flows.core.brokers import RABBITMQ_MAX_DELAY_SECONDS
from flows.core.errors import ConfigurationError
from flows.core.registry import catalog
from flows.produce.publishing import publish_to
from tests.reliability.catalog import runs
from tests.reliability.conftest import VISIBILITY_SECONDS, sized
from tests.reliability.held import held, queued
from tests.support.brokers import on_rabbitmq, rabbitmq_only, redis_only_because
from tests.support.waiting import wait_for
from tracing.redis import get_redis

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_delay_past_what_the_broker_holds_is_refused_at_publish_and_at_declaration(settings, figure):
    settings.FLOWS_VISIBILITY_TIMEOUT = VISIBILITY_SECONDS
    if on_rabbitmq():
        too_long = RABBITMQ_MAX_DELAY_SECONDS + 1
        reason = rf"the most RabbitMQ's native delayed delivery holds \({RABBITMQ_MAX_DELAY_SECONDS}s\)"
    else:
        too_long = VISIBILITY_SECONDS // 2 + 1
        reason = rf"half the broker visibility timeout \({VISIBILITY_SECONDS}s\)"
    handler = catalog.handler("r_note")
    envelope = flows.Envelope(type="rel.note", payload={"key": "late"})
    with pytest.raises(ConfigurationError, match=rf"a delay of {too_long}s exceeds {reason}") as refused:
        publish_to(handler, envelope, countdown=too_long)
    saved = catalog.snapshot()
    try:
        flows.message_type("rel.scratch", pattern="fire_and_forget")
        with pytest.raises(ConfigurationError, match=rf"backoff maximum {too_long}s exceeds {reason}") as declared:
            flows.handler("rel.scratch", consumer="slow_retry", queue="r.scratch", backoff=flows.Backoff(maximum=too_long))(lambda m: None)
    finally:
        catalog.restore(saved)
    assert queued("r.notes") == 0, "nothing was sent"
    figure(f"countdown {too_long}s: refused ({refused.value}); retry backoff {too_long}s: refused at declaration ({declared.value})")


@redis_only_because("the visibility timeout bounds a delay only where a worker holds the delayed message; RabbitMQ holds it itself (the check below)")
def test_a_delay_within_the_visibility_timeout_runs_exactly_once_with_two_workers_watching(chaos_worker, settings, figure):
    settings.FLOWS_VISIBILITY_TIMEOUT = VISIBILITY_SECONDS
    n = sized(20, 5)
    chaos_worker("holder", ["r.notes"])
    chaos_worker("watcher", ["r.notes"])
    handler = catalog.handler("r_note")
    delay = VISIBILITY_SECONDS / 2 - 0.5
    for i in range(n):
        publish_to(handler, flows.Envelope(type="rel.note", payload={"key": f"delayed-{i}"}), countdown=delay)
    sent_at = time.monotonic()
    wait_for(lambda: len(runs("r_note")) >= n, timeout=60, what="the delayed messages to run")
    # Past the visibility timeout, a delivery held too long would be restored and run again.
    wait_for(lambda: time.monotonic() - sent_at > VISIBILITY_SECONDS + 3 and get_redis().zcard("unacked_index") == 0, timeout=60, what="the visibility timeout to pass")
    ran = runs("r_note")
    figure(f"{n} messages delayed {delay:g}s on a {VISIBILITY_SECONDS}s visibility timeout, two workers: {len(ran)} runs, {len(ran) - len(set(ran))} duplicated")
    assert sorted(ran) == sorted(f"delayed-{i}" for i in range(n))


@rabbitmq_only
def test_a_delayed_message_waits_in_the_broker_not_in_a_worker_and_runs_exactly_once_with_two_workers(chaos_worker, figure):
    n = sized(20, 5)
    delay = 8
    chaos_worker("holder", ["r.notes"])
    chaos_worker("watcher", ["r.notes"])
    handler = catalog.handler("r_note")
    for i in range(n):
        publish_to(handler, flows.Envelope(type="rel.note", payload={"key": f"delayed-{i}"}), countdown=delay)
    sent_at = time.monotonic()
    # While the delay runs, the message is in the broker's delay levels: on no queue a worker
    # reads, held by no worker.
    waiting_on_queue, held_by_workers = queued("r.notes"), held()
    looked_after = time.monotonic() - sent_at
    wait_for(lambda: len(runs("r_note")) >= n, timeout=60, what="the delayed messages to run")
    wait_for(lambda: held() == 0, what="the deliveries to be acknowledged")
    ran = runs("r_note")
    figure(
        f"{n} messages delayed {delay}s, two workers: {looked_after:.1f}s after sending {waiting_on_queue} on the queue and {held_by_workers} held by workers; "
        f"{len(ran)} runs, {len(ran) - len(set(ran))} duplicated"
    )
    assert looked_after < delay, "looked too late to see the delay in progress"
    assert (waiting_on_queue, held_by_workers) == (0, 0)
    assert sorted(ran) == sorted(f"delayed-{i}" for i in range(n))
